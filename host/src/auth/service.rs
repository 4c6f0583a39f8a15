//! Users, logins, JWTs and API keys.
//!
//! - Passwords are argon2id hashes (the `argon2` crate's defaults), verified on a blocking
//!   thread. Unknown users and wrong passwords get the same answer and take the same time.
//! - JWTs are HS256 only: the server fixes the algorithm, so a token signed with another one,
//!   or with `none`, is refused. The secret comes from the config, or is generated once and
//!   kept in `<data_dir>/jwt.key` (mode 0600).
//! - API keys read `thk_<id>_<secret>`; only the SHA-256 of the secret is stored, and every
//!   request reads the key's record, so a revocation applies at once.

use std::path::Path;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{Principal, Role};
use crate::model::{ApiKeyRecord, UserRecord};
use crate::policy::{self, PluginAccess};
use crate::storage::{Storage, StorageError};

/// Authentication settings (`[auth]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// When false every request acts as the local admin: for development only.
    pub enabled: bool,
    /// HS256 secret; generated and kept in the data directory when absent.
    pub jwt_secret: Option<String>,
    /// Lifetime of a login token.
    pub token_ttl_s: u64,
    /// Password of the `admin` created on first start; `TASKHOST_ADMIN_PASSWORD` sets it.
    pub admin_password: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            jwt_secret: None,
            token_ttl_s: 12 * 3600,
            admin_password: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Missing, malformed, expired, revoked or wrongly signed credentials; deliberately vague.
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("API key {0} not found")]
    KeyNotFound(String),
    #[error("user {0} not found")]
    UserNotFound(String),
    /// Too many logins are being checked at once.
    #[error("too many logins at once; try again shortly")]
    Busy,
    #[error("auth storage: {0}")]
    Storage(#[from] StorageError),
    #[error("auth setup: {0}")]
    Setup(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    #[serde(default)]
    permissions: Vec<String>,
    exp: i64,
    iat: i64,
}

/// What a successful login returns.
#[derive(Debug, Serialize)]
pub struct LoginResult {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub user: serde_json::Value,
}

/// A request for a new API key: a `role` or `permissions`, not both; `expires_at` in the
/// future; `runner_labels` only with the `runners:register` permission.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRequest {
    #[schema(min_length = 1, max_length = 128, pattern = "\\S")]
    pub name: String,
    pub role: Option<Role>,
    #[schema(schema_with = crate::schema::permissions)]
    pub permissions: Option<Vec<String>>,
    #[serde(default, with = "crate::model::timestamp::option")]
    pub expires_at: Option<DateTime<Utc>>,
    /// With `runners:register`: the only labels runners registered with this key may carry.
    #[schema(schema_with = crate::schema::key_runner_labels)]
    pub runner_labels: Option<Vec<String>>,
}

/// The authentication service. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<AuthInner>,
}

struct AuthInner {
    storage: Arc<dyn Storage>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_s: u64,
    enabled: bool,
    /// A hash to verify against when the user does not exist, so both cases take as long.
    decoy_hash: String,
    /// Password hashes computed at once: each costs ~20 MB and tens of ms of a core, so a
    /// burst of logins must queue here rather than fill the blocking pool.
    hashing: tokio::sync::Semaphore,
    /// Keys clients of replaced systems already hold (see [`super::ImportedKeys`]).
    imported: super::ImportedKeys,
}

/// How long a login waits for a hashing slot before it is turned away as busy.
const HASHING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Setup(format!("password hashing failed: {e}")))
}

pub(crate) fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

pub(crate) fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buffer)
}

/// Reads a secret file, or creates it with `make` (mode 0600) when it does not exist.
pub(crate) fn secret_file(path: &Path, make: impl FnOnce() -> String) -> Result<String, AuthError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .map_err(|e| AuthError::Setup(format!("cannot read {}: {e}", path.display())))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(AuthError::Setup(format!(
                        "{} is readable by other users (mode {:o}); chmod 600 it",
                        path.display(),
                        mode & 0o777
                    )));
                }
            }
            Ok(text.trim().to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            use std::io::Write as _;
            let mut file = options
                .open(path)
                .map_err(|e| AuthError::Setup(format!("cannot create {}: {e}", path.display())))?;
            file.write_all(value.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| AuthError::Setup(format!("cannot write {}: {e}", path.display())))?;
            Ok(value)
        }
        Err(e) => Err(AuthError::Setup(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Permissions (and runner labels) one key may name.
const MAX_KEY_PERMISSIONS: usize = 64;

/// The principal a stored key acts as now: `None` when it is revoked, expired or its owner is
/// gone. Its role is the lesser of the key's and the owner's current one, so a demoted owner's
/// keys shrink with it.
pub(crate) async fn principal_for_key(
    storage: &dyn Storage,
    record: &ApiKeyRecord,
) -> Result<Option<Principal>, AuthError> {
    if record.revoked_at.is_some() || record.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Ok(None);
    }
    let Some(owner) = storage.get_user(&record.owner).await? else {
        return Ok(None);
    };
    let (role, restricted) = match record.role {
        Some(role) if owner.role.covers(role) => (role, false),
        Some(_) => (owner.role, false),
        None => (owner.role, true),
    };
    Ok(Some(Principal {
        name: owner.username,
        role,
        permissions: record.permissions.clone(),
        restricted,
        key_id: Some(record.id.clone()),
        runner_labels: record.runner_labels.clone(),
    }))
}

pub(crate) fn valid_username(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

impl Auth {
    /// Opens the service: loads or creates the JWT secret, and creates the first `admin` when
    /// there are no users yet (with the configured password, or a random one logged once).
    pub async fn open(
        config: &AuthConfig,
        data_dir: &Path,
        storage: Arc<dyn Storage>,
        imported: super::ImportedKeys,
    ) -> Result<Self, AuthError> {
        let secret = match &config.jwt_secret {
            Some(secret) if secret.len() >= 32 => secret.clone(),
            Some(_) => {
                return Err(AuthError::Setup(
                    "auth.jwt_secret must be at least 32 characters".into(),
                ));
            }
            None => secret_file(&data_dir.join("jwt.key"), || random_token(48))?,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        let decoy_hash =
            tokio::task::spawn_blocking(|| hash_password("decoy password, never valid"))
                .await
                .map_err(|e| AuthError::Setup(e.to_string()))??;
        let auth = Self {
            inner: Arc::new(AuthInner {
                storage,
                encoding: EncodingKey::from_secret(secret.as_bytes()),
                decoding: DecodingKey::from_secret(secret.as_bytes()),
                validation,
                ttl_s: config.token_ttl_s.max(60),
                enabled: config.enabled,
                decoy_hash,
                hashing: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                ),
                imported,
            }),
        };
        if auth.inner.storage.count_users().await? == 0 {
            let (password, generated) = match &config.admin_password {
                Some(password) if !password.is_empty() => (password.clone(), false),
                _ => (random_token(18), true),
            };
            let hash = tokio::task::spawn_blocking(move || {
                hash_password(&password).map(|h| (h, password))
            })
            .await
            .map_err(|e| AuthError::Setup(e.to_string()))??;
            auth.inner
                .storage
                .put_user(
                    &UserRecord {
                        username: "admin".into(),
                        password_hash: hash.0,
                        role: Role::Admin,
                        created_at: Utc::now(),
                    },
                    true,
                )
                .await?;
            if generated {
                // Shown this once; only its hash is stored.
                warn!(
                    "created user admin with password {} (set TASKHOST_ADMIN_PASSWORD to choose it)",
                    hash.1
                );
            } else {
                info!("created user admin with the configured password");
            }
        }
        Ok(auth)
    }

    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// Checks a username and password; returns a token.
    pub async fn login(&self, username: &str, password: &str) -> Result<LoginResult, AuthError> {
        let user = self.inner.storage.get_user(username).await?;
        let hash = user
            .as_ref()
            .map_or(self.inner.decoy_hash.clone(), |u| u.password_hash.clone());
        let password = password.to_owned();
        let _slot = tokio::time::timeout(HASHING_WAIT, self.inner.hashing.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(AuthError::Busy)?;
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        let user = match user {
            Some(user) if verified => user,
            _ => return Err(AuthError::Unauthenticated("invalid username or password")),
        };
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.username.clone(),
            role: user.role,
            permissions: Vec::new(),
            iat: now,
            exp: now + self.inner.ttl_s as i64,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.inner.encoding,
        )
        .map_err(|e| AuthError::Setup(format!("cannot sign a token: {e}")))?;
        Ok(LoginResult {
            access_token: token,
            token_type: "bearer",
            expires_in: self.inner.ttl_s,
            user: serde_json::json!({"username": user.username, "role": user.role}),
        })
    }

    /// The principal behind a bearer credential: a JWT, or an API key.
    pub async fn authenticate_bearer(&self, credential: &str) -> Result<Principal, AuthError> {
        if credential.starts_with("thk_") {
            return self.authenticate_api_key(credential).await;
        }
        if let Some(principal) = self.inner.imported.principal(credential) {
            return Ok(principal);
        }
        let data = jsonwebtoken::decode::<Claims>(
            credential,
            &self.inner.decoding,
            &self.inner.validation,
        )
        .map_err(|_| AuthError::Unauthenticated("invalid or expired token"))?;
        let claims = data.claims;
        // A deleted user's tokens stop working, and a changed role applies at once.
        let user = self
            .inner
            .storage
            .get_user(&claims.sub)
            .await?
            .ok_or(AuthError::Unauthenticated("invalid or expired token"))?;
        Ok(Principal::with_role(&user.username, user.role))
    }

    pub async fn authenticate_api_key(&self, key: &str) -> Result<Principal, AuthError> {
        let refused = || AuthError::Unauthenticated("invalid, expired or revoked API key");
        if !key.starts_with("thk_")
            && let Some(principal) = self.inner.imported.principal(key)
        {
            return Ok(principal);
        }
        let (id, secret) = key
            .strip_prefix("thk_")
            .and_then(|rest| rest.split_once('_'))
            .ok_or_else(refused)?;
        let record = self
            .inner
            .storage
            .get_api_key(id)
            .await?
            .ok_or_else(refused)?;
        if record.secret_sha256 != sha256_hex(secret) {
            return Err(refused());
        }
        principal_for_key(self.inner.storage.as_ref(), &record)
            .await?
            .ok_or_else(refused)
    }

    pub async fn create_user(
        &self,
        by: &Principal,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<UserRecord, AuthError> {
        if !policy::may_manage_users(by) {
            return Err(AuthError::Forbidden(
                "creating users needs users:manage".into(),
            ));
        }
        if !policy::may_create_user(by, role) {
            return Err(AuthError::Forbidden(
                "only an admin can create a user with more rights than its own".into(),
            ));
        }
        if !valid_username(username) {
            return Err(AuthError::Invalid(
                "username must be 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', '@'".into(),
            ));
        }
        if !(8..=1024).contains(&password.chars().count()) {
            return Err(AuthError::Invalid(
                "password must be 8 to 1024 characters".into(),
            ));
        }
        let password = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| AuthError::Setup(e.to_string()))??;
        let user = UserRecord {
            username: username.to_owned(),
            password_hash: hash,
            role,
            created_at: Utc::now(),
        };
        match self.inner.storage.put_user(&user, true).await {
            Ok(()) => Ok(user),
            Err(StorageError::Duplicate(name)) => Err(AuthError::Exists(format!("user {name}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes a user's role; it applies at once to the user's tokens and keys.
    pub async fn set_role(
        &self,
        by: &Principal,
        username: &str,
        role: Role,
    ) -> Result<UserRecord, AuthError> {
        if !policy::may_manage_users(by) {
            return Err(AuthError::Forbidden(
                "changing roles needs users:manage".into(),
            ));
        }
        let mut user = self
            .inner
            .storage
            .get_user(username)
            .await?
            .ok_or_else(|| AuthError::UserNotFound(username.to_owned()))?;
        if !policy::may_create_user(by, role) || !policy::may_create_user(by, user.role) {
            return Err(AuthError::Forbidden(
                "only an admin can give or take rights beyond its own".into(),
            ));
        }
        user.role = role;
        self.inner.storage.put_user(&user, false).await?;
        Ok(user)
    }

    /// Creates a key acting as `by`; returns its record and the key in clear (shown once).
    /// `access` says who may create each plugin's tasks, for keys that name a plugin.
    pub async fn create_api_key(
        &self,
        by: &Principal,
        request: ApiKeyRequest,
        access: &(dyn Fn(&str) -> PluginAccess + Sync),
    ) -> Result<(ApiKeyRecord, String), AuthError> {
        if request.name.trim().is_empty() || request.name.chars().count() > 128 {
            return Err(AuthError::Invalid("name must be 1-128 characters".into()));
        }
        if request.role.is_some() && request.permissions.is_some() {
            return Err(AuthError::Invalid(
                "give a role or permissions, not both".into(),
            ));
        }
        if let Some(role) = request.role
            && !by.role.covers(role)
        {
            return Err(AuthError::Forbidden(format!(
                "a {:?} cannot create a key with more rights than its own",
                by.role
            )));
        }
        if !policy::may_create_keys(by) {
            return Err(AuthError::Forbidden(
                "keys with explicit permissions cannot create keys".into(),
            ));
        }
        let permissions = request.permissions.unwrap_or_default();
        if permissions.len() > MAX_KEY_PERMISSIONS {
            return Err(AuthError::Invalid(format!(
                "at most {MAX_KEY_PERMISSIONS} permissions"
            )));
        }
        if let Some(bad) = permissions.iter().find(|p| !policy::is_known_permission(p)) {
            return Err(AuthError::Invalid(format!("unknown permission {bad:?}")));
        }
        // A key holds only rights its creator holds now (and, on every use, its owner).
        if let Some(denied) = permissions.iter().find(|p| {
            let plugin = p.split_once(':').map_or("", |(plugin, _)| plugin);
            !policy::may_grant(by, p, &access(plugin))
        }) {
            return Err(AuthError::Forbidden(format!(
                "{} does not hold {denied:?}, so no key of its can",
                by.name
            )));
        }
        if let Some(labels) = &request.runner_labels {
            if !permissions.iter().any(|p| p == policy::RUNNERS_REGISTER) {
                return Err(AuthError::Invalid(
                    "runner_labels needs the runners:register permission".into(),
                ));
            }
            if labels.len() > MAX_KEY_PERMISSIONS
                || labels.iter().any(|l| l.is_empty() || l.len() > 64)
            {
                return Err(AuthError::Invalid(format!(
                    "runner_labels: at most {MAX_KEY_PERMISSIONS} labels of 1-64 characters"
                )));
            }
        }
        if request.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(AuthError::Invalid(
                "expires_at must be in the future".into(),
            ));
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let secret = random_token(32);
        let record = ApiKeyRecord {
            id: id.clone(),
            name: request.name,
            owner: by.name.clone(),
            secret_sha256: sha256_hex(&secret),
            role: if permissions.is_empty() {
                Some(request.role.unwrap_or(by.role))
            } else {
                None
            },
            permissions,
            runner_labels: request.runner_labels,
            created_at: Utc::now(),
            expires_at: request.expires_at,
            revoked_at: None,
        };
        self.inner.storage.put_api_key(&record).await?;
        Ok((record, format!("thk_{id}_{secret}")))
    }

    /// The caller's keys (an admin sees all).
    pub async fn list_api_keys(&self, by: &Principal) -> Result<Vec<ApiKeyRecord>, AuthError> {
        let owner = (!policy::is_admin(by)).then_some(by.name.as_str());
        Ok(self.inner.storage.list_api_keys(owner).await?)
    }

    pub async fn revoke_api_key(
        &self,
        by: &Principal,
        id: &str,
    ) -> Result<ApiKeyRecord, AuthError> {
        let mut record = self
            .inner
            .storage
            .get_api_key(id)
            .await?
            .filter(|r| policy::may_manage_key(by, &r.owner))
            .ok_or_else(|| AuthError::KeyNotFound(id.to_owned()))?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(Utc::now());
            self.inner.storage.put_api_key(&record).await?;
        }
        Ok(record)
    }
}

/// The API view of a key: never its secret or hash.
pub fn api_key_json(record: &ApiKeyRecord) -> serde_json::Value {
    serde_json::json!({
        "id": record.id,
        "name": record.name,
        "owner": record.owner,
        "role": record.role,
        "permissions": record.permissions,
        "runner_labels": record.runner_labels,
        "created_at": crate::model::timestamp::format(&record.created_at),
        "expires_at": record.expires_at.map(|t| crate::model::timestamp::format(&t)),
        "revoked_at": record.revoked_at.map(|t| crate::model::timestamp::format(&t)),
    })
}
