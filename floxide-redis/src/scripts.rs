//! The Lua scripts, one state transition each, loaded once and run with EVALSHA (the
//! `redis` crate reloads a script when the server answers NOSCRIPT, e.g. after a restart).

use redis::Script;

const COMMON: &str = include_str!("../lua/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// Every script of the backend.
pub(crate) struct Scripts {
    pub(crate) start_run: Script,
    pub(crate) take: Script,
    pub(crate) heartbeat: Script,
    pub(crate) commit: Script,
    pub(crate) fail: Script,
    pub(crate) release: Script,
    pub(crate) control: Script,
    pub(crate) dead_letter: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            start_run: script(include_str!("../lua/start_run.lua")),
            take: script(include_str!("../lua/take.lua")),
            heartbeat: script(include_str!("../lua/heartbeat.lua")),
            commit: script(include_str!("../lua/commit.lua")),
            fail: script(include_str!("../lua/fail.lua")),
            release: script(include_str!("../lua/release.lua")),
            control: script(include_str!("../lua/control.lua")),
            dead_letter: script(include_str!("../lua/dead_letter.lua")),
        }
    }

    /// Every script, for loading them up front.
    pub(crate) fn all(&self) -> [&Script; 8] {
        [
            &self.start_run,
            &self.take,
            &self.heartbeat,
            &self.commit,
            &self.fail,
            &self.release,
            &self.control,
            &self.dead_letter,
        ]
    }
}
