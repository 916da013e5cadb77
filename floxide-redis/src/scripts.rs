//! The Lua scripts, one state transition each.
//!
//! On Redis 7 and later they are loaded once as a function library (`FUNCTION LOAD`) and run
//! with `FCALL`: the shared helpers are then defined once, not on every call (that prelude
//! cost about 20 µs per call). Older servers, or users not allowed to load functions, run the
//! same code as scripts with `EVALSHA`. A server that forgot the library or a script (a
//! restart without persistence) gets it again on the next call.

use redis::{RedisResult, Script, ToRedisArgs};

/// The helpers every script shares (its prelude), in parts: each may use what the parts before
/// it define.
const COMMON: &str = concat!(
    include_str!("../lua/common/base.lua"),
    "\n",
    include_str!("../lua/common/state.lua"),
    "\n",
    include_str!("../lua/common/history.lua"),
    "\n",
    include_str!("../lua/common/finish.lua"),
    "\n",
    include_str!("../lua/common/letters.lua"),
    "\n",
    include_str!("../lua/common/leases.lua"),
    "\n",
    include_str!("../lua/common/replays.lua"),
    "\n",
    include_str!("../lua/common/timings.lua"),
);

/// The scripts' sources, by name.
const BODIES: [(&str, &str); 8] = [
    ("start_run", include_str!("../lua/start_run.lua")),
    ("take", include_str!("../lua/take.lua")),
    ("heartbeat", include_str!("../lua/heartbeat.lua")),
    (
        "commit",
        concat!(
            include_str!("../lua/commit_steps.lua"),
            "\n",
            include_str!("../lua/commit.lua")
        ),
    ),
    ("fail", include_str!("../lua/fail.lua")),
    ("release", include_str!("../lua/release.lua")),
    ("control", include_str!("../lua/control.lua")),
    ("dead_letter", include_str!("../lua/dead_letter.lua")),
];

/// The line that ends a script's own helpers, where its per-call part starts (optional).
const EACH_CALL: &str = "\n-- Each call:\n";

/// One script: as a script for `EVALSHA`, and its function's name in the library.
pub(crate) struct Lua {
    script: Script,
    function: String,
}

/// Every script of the backend, and the function library holding them all.
pub(crate) struct Scripts {
    pub(crate) start_run: Lua,
    pub(crate) take: Lua,
    pub(crate) heartbeat: Lua,
    pub(crate) commit: Lua,
    pub(crate) fail: Lua,
    pub(crate) release: Lua,
    pub(crate) control: Lua,
    pub(crate) dead_letter: Lua,
    /// The library's source (`FUNCTION LOAD`); its name and function names carry a hash of
    /// the code, so that processes of different versions can share a server.
    library: String,
}

impl Scripts {
    /// The scripts; `sharded` for a Redis Cluster (they publish with `SPUBLISH`, to the
    /// partition's own master, and announce new ready work on the partition's wake channel);
    /// `history` when they record the runs' step history, `keep_routine` when a completed run
    /// keeps a routine one.
    pub(crate) fn new(sharded: bool, history: bool, keep_routine: bool) -> Self {
        let all: String = BODIES.iter().map(|(_, body)| *body).collect();
        let common = format!(
            "local SHARDED = {sharded}\nlocal STEP_HISTORY = {history}\n\
             local KEEP_ROUTINE = {keep_routine}\n{COMMON}"
        );
        let hash = Script::new(&format!("{common}{all}")).get_hash()[..12].to_owned();
        let mut library = format!("#!lua name=floxide_{hash}\nlocal KEYS, ARGV\n{common}\n");
        let mut lua = Vec::with_capacity(BODIES.len());
        for (name, source) in BODIES {
            let function = format!("floxide_{hash}_{name}");
            // A script's own helpers (before the `EACH_CALL` line) are made once in the
            // library, in a block of their own; the rest runs on every call.
            let (helpers, body) = source.split_once(EACH_CALL).unwrap_or(("", source));
            library.push_str(&format!(
                "do\n{helpers}\nredis.register_function('{function}', function(keys, args)\n\
                 KEYS, ARGV = keys, args\nsetup()\n{body}\nend)\nend\n"
            ));
            lua.push(Lua {
                script: Script::new(&format!("{common}\nsetup()\n{helpers}\n{body}")),
                function,
            });
        }
        let [start_run, take, heartbeat, commit, fail, release, control, dead_letter] =
            <[Lua; 8]>::try_from(lua).unwrap_or_else(|_| unreachable!("one per body"));
        Scripts {
            start_run,
            take,
            heartbeat,
            commit,
            fail,
            release,
            control,
            dead_letter,
            library,
        }
    }

    /// Every script, for loading them up front (without functions).
    pub(crate) fn all(&self) -> [&Script; 8] {
        [
            &self.start_run.script,
            &self.take.script,
            &self.heartbeat.script,
            &self.commit.script,
            &self.fail.script,
            &self.release.script,
            &self.control.script,
            &self.dead_letter.script,
        ]
    }

    /// `FUNCTION LOAD` of the library (an error when it is loaded already).
    pub(crate) fn load_library(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg(&self.library);
        cmd
    }
}

/// Whether `error` says the library is loaded already (by this or another process).
pub(crate) fn already_loaded(error: &redis::RedisError) -> bool {
    error.to_string().contains("already exists")
}

/// Whether `error` says functions cannot be loaded here: a server before Redis 7 (unknown
/// command) or a user whose ACL does not allow it.
pub(crate) fn no_functions(error: &redis::RedisError) -> bool {
    let text = error.to_string().to_lowercase();
    text.contains("unknown command") || text.contains("noperm")
}

/// Whether `error` says the server does not know the function (it lost the library).
pub(crate) fn function_missing(error: &redis::RedisError) -> bool {
    error.to_string().contains("Function not found")
}

/// A call of one script with its keys and arguments, run as a function or a script.
pub(crate) struct Call<'a> {
    lua: &'a Lua,
    /// The keys and the arguments, each list in a `Cmd` of its own used as a buffer: adding
    /// one allocates nothing once the buffer has grown (a commit of a batch sends hundreds; a
    /// `Vec` of `Vec`s made two allocations for each).
    keys: redis::Cmd,
    args: redis::Cmd,
    /// The position of the request id among the arguments: a retry sends it with a `+`
    /// appended, which tells the script to look for the first attempt's answer.
    request_at: Option<usize>,
}

/// The arguments written into `list` (see [`Call`]), in order.
fn plain(list: &redis::Cmd) -> impl Iterator<Item = &[u8]> + '_ {
    list.args_iter().filter_map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        // (Only a scanning command has a cursor.)
        _ => None,
    })
}

impl<'a> Call<'a> {
    /// A call of `lua` with one key.
    pub(crate) fn new(lua: &'a Lua, key: impl ToRedisArgs) -> Self {
        let mut keys = redis::Cmd::new();
        keys.arg(key);
        Call {
            lua,
            keys,
            args: redis::Cmd::new(),
            request_at: None,
        }
    }

    /// Adds a key.
    pub(crate) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        self.keys.arg(key);
        self
    }

    /// Adds the request id as the next argument.
    pub(crate) fn request(&mut self, id: &str) -> &mut Self {
        self.request_at = Some(self.args.args_iter().len());
        self.arg(id)
    }

    /// Calls `each` with the arguments of an attempt (`retry`: not the first, whose request
    /// id goes with a `+`).
    fn each_arg(&self, retry: bool, mut each: impl FnMut(&[u8])) {
        for (i, arg) in plain(&self.args).enumerate() {
            if retry && self.request_at == Some(i) {
                each(&[arg, b"+"].concat());
            } else {
                each(arg);
            }
        }
    }

    /// Adds an argument.
    pub(crate) fn arg(&mut self, value: impl ToRedisArgs) -> &mut Self {
        self.args.arg(value);
        self
    }

    /// The call as `FCALL` (`retry`: a later attempt of the same request).
    pub(crate) fn fcall(&self, retry: bool) -> redis::Cmd {
        let keys = self.keys.args_iter().len();
        let count = 3 + keys + self.args.args_iter().len();
        let data: usize = plain(&self.keys)
            .chain(plain(&self.args))
            .map(<[u8]>::len)
            .sum();
        let mut cmd = redis::Cmd::with_capacity(count, self.lua.function.len() + data + 16);
        cmd.arg("FCALL").arg(&self.lua.function).arg(keys);
        for key in plain(&self.keys) {
            cmd.arg(key);
        }
        self.each_arg(retry, |arg| {
            cmd.arg(arg);
        });
        cmd
    }

    /// The call as a script invocation (`EVALSHA`, loading the script when it is missing).
    pub(crate) fn invocation(&self, retry: bool) -> redis::ScriptInvocation<'a> {
        let mut inv = self.lua.script.prepare_invoke();
        for key in plain(&self.keys) {
            inv.key(key);
        }
        self.each_arg(retry, |arg| {
            inv.arg(arg);
        });
        inv
    }
}

/// Runs `call` on `conn` (`retry`: a later attempt of the same request): `FCALL` when
/// `functions`, loading the library again when the server lost it; else `EVALSHA`.
pub(crate) async fn run_call<T: redis::FromRedisValue>(
    scripts: &Scripts,
    functions: bool,
    call: &Call<'_>,
    retry: bool,
    conn: &mut (impl redis::aio::ConnectionLike + Send),
) -> RedisResult<T> {
    if !functions {
        return call.invocation(retry).invoke_async(conn).await;
    }
    match call.fcall(retry).query_async(conn).await {
        Err(e) if function_missing(&e) => {
            reload(scripts, conn).await?;
            call.fcall(retry).query_async(conn).await
        }
        answer => answer,
    }
}

/// Loads the library (again); loaded already is fine.
pub(crate) async fn reload(
    scripts: &Scripts,
    conn: &mut (impl redis::aio::ConnectionLike + Send),
) -> RedisResult<()> {
    match scripts.load_library().query_async::<()>(conn).await {
        Err(e) if !already_loaded(&e) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{Call, Scripts};

    /// The arguments of `cmd` as texts.
    fn texts(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<not a plain argument>".to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_call_sends_its_keys_then_its_arguments_and_a_retry_marks_the_request_id() {
        let scripts = Scripts::new(false, true, false);
        let mut call = Call::new(&scripts.take, "q:wf");
        call.key("guard")
            .arg("prefix")
            .request("req-1")
            .arg(7u64)
            .arg(b"".as_slice())
            .arg(&["a", "b"][..]);
        let function = scripts.take.function.clone();
        let first = texts(&call.fcall(false));
        let expected = [
            "FCALL", &function, "2", "q:wf", "guard", "prefix", "req-1", "7", "", "a", "b",
        ];
        assert_eq!(first, expected);
        let retry = texts(&call.fcall(true));
        let mut marked = expected.map(str::to_owned).to_vec();
        marked[6] = "req-1+".to_owned();
        assert_eq!(retry, marked);
    }
}
