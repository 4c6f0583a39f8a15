//! The plugins compiled into the host by `build.rs`, available with no set-up.

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));
