//! What the backends' fault-worker examples share: their millisecond settings from the
//! environment, and exiting with the process that started them (included with `#[path]`).

use std::time::Duration;

use floxide::FloxideError;

/// The environment variable `name` as milliseconds, or `default`.
pub fn env_ms(name: &str, default: u64) -> Result<Duration, FloxideError> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| FloxideError::Generic(format!("{name}: `{v}` is not a number of ms"))),
        Err(_) => Ok(Duration::from_millis(default)),
    }
}

/// With `FAULT_WATCH_PARENT=1`, exits when the process that started this one is gone (the
/// tests set it, so that no worker outlives a test binary that was itself killed).
pub fn watch_parent() {
    #[cfg(unix)]
    if std::env::var("FAULT_WATCH_PARENT").is_ok_and(|v| v == "1") {
        let parent = std::os::unix::process::parent_id();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(3);
            }
        });
    }
}
