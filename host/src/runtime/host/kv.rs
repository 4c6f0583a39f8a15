//! `taskhost:plugin/kv`: the plugin's private key-value store.

use tracing::instrument;

use crate::runtime::bindings::taskhost::plugin::kv::Host;
use crate::runtime::services::host_error;
use crate::runtime::state::HostState;
use crate::runtime::{ErrorKind, HostError};

/// Longest key.
const MAX_KEY_BYTES: usize = 512;
/// Most keys one `list-keys` returns.
const MAX_LIST: u32 = 1000;

fn check_key(key: &str) -> Result<(), HostError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(host_error(
            ErrorKind::Invalid,
            format!("keys are 1 to {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(())
}

impl Host for HostState {
    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, HostError>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        Ok(self.services.kv_get(key).await)
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        let max = self.shared.config.max_kv_value_bytes;
        if value.len() > max {
            return Ok(Err(host_error(
                ErrorKind::LimitExceeded,
                format!("a value is at most {max} bytes"),
            )));
        }
        Ok(self.services.kv_set(key, value).await)
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(e) = check_key(&key) {
            return Ok(Err(e));
        }
        Ok(self.services.kv_delete(key).await)
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn list_keys(
        &mut self,
        prefix: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<String>, HostError>> {
        if prefix.len() > MAX_KEY_BYTES {
            return Ok(Err(host_error(ErrorKind::Invalid, "prefix too long")));
        }
        Ok(self
            .services
            .kv_list_keys(prefix, limit.min(MAX_LIST))
            .await)
    }
}
