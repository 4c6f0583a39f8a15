//! The data each task's `Store` carries: its WASI context, its limits, its deadline and the
//! handles through which host calls reach orchestration.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::RuntimeShared;
use super::control::TaskControl;
use super::grants::Grants;
use super::services::TaskServices;

/// Store data of one instance.
pub struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) services: Arc<dyn TaskServices>,
    pub(crate) control: TaskControl,
    pub(crate) grants: Arc<Grants>,
    pub(crate) shared: Arc<RuntimeShared>,
    pub(crate) deadline: Arc<Deadline>,
    /// Plugin name, for log spans and error messages.
    pub(crate) plugin: Arc<str>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers whether the cap was hit, so that the trap that follows an
/// allocation failure can be reported as `MEMORY_LIMIT_EXCEEDED` instead of a plain trap.
pub struct MemoryLimiter {
    max_bytes: usize,
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            hit: false,
        }
    }
}

/// Table elements one instance may have; generous for real code, fatal for a table bomb.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.max_bytes && maximum.is_none_or(|max| desired <= max);
        if !allowed {
            self.hit = true;
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }
}

/// A run's wall-clock deadline, readable from the epoch callback and the async backstop alike.
/// While the task is paused the deadline is suspended and resumes with the time that was left.
#[derive(Debug)]
pub struct Deadline {
    origin: Instant,
    /// Milliseconds after `origin`; `u64::MAX` while suspended.
    at_ms: AtomicU64,
}

impl Deadline {
    pub fn after(timeout: Duration) -> Self {
        let origin = Instant::now();
        Self {
            origin,
            at_ms: AtomicU64::new(millis(timeout)),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.origin.elapsed())
    }

    pub fn expired(&self) -> bool {
        self.now_ms() >= self.at_ms.load(Ordering::Acquire)
    }

    /// Time left, `None` while suspended.
    pub fn remaining(&self) -> Option<Duration> {
        let at = self.at_ms.load(Ordering::Acquire);
        (at != u64::MAX).then(|| Duration::from_millis(at.saturating_sub(self.now_ms())))
    }

    /// Stops the clock; returns the time that was left.
    pub fn suspend(&self) -> Duration {
        let at = self.at_ms.swap(u64::MAX, Ordering::AcqRel);
        Duration::from_millis(at.saturating_sub(self.now_ms()))
    }

    /// Restarts the clock with `left` to go.
    pub fn resume(&self, left: Duration) {
        self.at_ms.store(
            self.now_ms().saturating_add(millis(left)),
            Ordering::Release,
        );
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX - 1)
}

/// Why the runtime interrupted an instance; carried through the trap so that the run can be
/// classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Interrupt {
    #[error("the run exceeded its time limit")]
    Timeout,
    #[error("the run was stopped by force")]
    Killed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspended_deadline_does_not_expire_and_resumes_with_its_remaining_time() {
        let deadline = Deadline::after(Duration::from_millis(0));
        assert!(deadline.expired());
        let deadline = Deadline::after(Duration::from_secs(60));
        let left = deadline.suspend();
        assert!(left > Duration::from_secs(59));
        assert!(!deadline.expired());
        assert_eq!(deadline.remaining(), None);
        deadline.resume(Duration::ZERO);
        assert!(deadline.expired());
    }

    #[test]
    fn the_limiter_refuses_growth_past_its_cap_and_remembers_it() {
        let mut limiter = MemoryLimiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!limiter.hit);
        assert!(!limiter.memory_growing(0, (1 << 20) + 1, None).unwrap());
        assert!(limiter.hit);
    }
}
