//! Rate limits, by route class: per client IP before authentication, per principal after it,
//! and stricter classes for logins (per IP and per username) against password guessing. GCRA limiters from
//! `governor`; every `/api/v1` response reports the limit that applied in `X-RateLimit-*`.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

/// Requests per minute for each class (`[rate_limits]` in the config file). The whole
/// minute's allowance may come as a burst.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Per authenticated principal, on every `/api/v1` route.
    pub per_principal_per_minute: u32,
    /// Per client IP, before authentication, on every `/api/v1` route.
    pub per_ip_per_minute: u32,
    /// Per client IP, on `POST /api/v1/auth/login`.
    pub login_per_minute: u32,
    /// Per username, on `POST /api/v1/auth/login`, whatever address the attempts come from
    /// (guessing one account's password from many addresses).
    pub login_per_user_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_principal_per_minute: 1200,
            per_ip_per_minute: 2400,
            login_per_minute: 10,
            login_per_user_per_minute: 10,
        }
    }
}

/// Which limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ip,
    Principal,
    Login,
    LoginUser,
}

/// What the `X-RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the allowance is whole again.
    pub reset_s: u64,
}

/// A refusal: the headers, and when to try again.
#[derive(Debug, Clone, Copy)]
pub struct Exceeded {
    pub info: RateInfo,
    pub retry_after_s: u64,
}

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct RateLimits {
    config: RateLimitConfig,
    ip: Keyed,
    principal: Keyed,
    login: Keyed,
    login_user: Keyed,
    clock: DefaultClock,
}

fn limiter(per_minute: u32) -> Keyed {
    let per_minute = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_minute(per_minute))
        .with_middleware::<StateInformationMiddleware>()
}

impl RateLimits {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            ip: limiter(config.per_ip_per_minute),
            principal: limiter(config.per_principal_per_minute),
            login: limiter(config.login_per_minute),
            login_user: limiter(config.login_per_user_per_minute),
            clock: DefaultClock::default(),
            config,
        }
    }

    fn per_minute(&self, class: Class) -> u32 {
        match class {
            Class::Ip => self.config.per_ip_per_minute,
            Class::Principal => self.config.per_principal_per_minute,
            Class::Login => self.config.login_per_minute,
            Class::LoginUser => self.config.login_per_user_per_minute,
        }
        .max(1)
    }

    /// Counts one request of `key` against `class`. `None` when limits are off.
    pub fn check(&self, class: Class, key: &str) -> Option<Result<RateInfo, Exceeded>> {
        if !self.config.enabled {
            return None;
        }
        let limiter = match class {
            Class::Ip => &self.ip,
            Class::Principal => &self.principal,
            Class::Login => &self.login,
            Class::LoginUser => &self.login_user,
        };
        let limit = self.per_minute(class);
        // One unit of the allowance comes back every 60/limit seconds.
        let refill = |missing: u32| ((missing as f64) * 60.0 / limit as f64).ceil() as u64;
        Some(match limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(RateInfo {
                    limit,
                    remaining,
                    reset_s: refill(limit - remaining.min(limit)),
                })
            }
            Err(not_until) => {
                let wait: Duration = not_until.wait_time_from(self.clock.now());
                let retry_after_s = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(Exceeded {
                    info: RateInfo {
                        limit,
                        remaining: 0,
                        reset_s: refill(limit),
                    },
                    retry_after_s: retry_after_s.max(1),
                })
            }
        })
    }

    /// Forgets keys whose allowance is whole again (keeps memory bounded).
    pub fn forget_idle(&self) {
        self.ip.retain_recent();
        self.principal.retain_recent();
        self.login.retain_recent();
        self.login_user.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowance_runs_out_and_says_when_to_come_back() {
        let limits = RateLimits::new(RateLimitConfig {
            login_per_minute: 3,
            ..RateLimitConfig::default()
        });
        let remaining: Vec<u32> = (0..3)
            .map(|_| {
                limits
                    .check(Class::Login, "1.2.3.4")
                    .expect("on")
                    .expect("allowed")
                    .remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limits
            .check(Class::Login, "1.2.3.4")
            .expect("on")
            .expect_err("over the limit");
        assert!((1..=20).contains(&refused.retry_after_s), "{refused:?}");
        assert_eq!(refused.info.remaining, 0);
        // Another key has its own allowance.
        assert!(limits.check(Class::Login, "5.6.7.8").expect("on").is_ok());
    }
}
