//! Checkpoint: a run killed midway resumes, in another process, from its last saved step.
//!
//! Run with `cargo run --example checkpoint`.
//!
//! What happens:
//!
//! 1. The parent process creates a fresh directory under the system's temp dir (removed at
//!    the end, whatever happens).
//! 2. It starts **itself** again as a child process, with the directory in the environment
//!    variable `FLOXIDE_CHECKPOINT_CHILD`. The child runs a four-step pipeline
//!    (`download → parse → enrich → publish`) with `run_with_checkpoint` and a
//!    `FileCheckpointStore` in that directory, which saves the context and the pending work
//!    after every step. Halfway through `enrich` the child kills itself with
//!    `std::process::exit(137)`: no destructor, no error handling, no final save, like a
//!    `kill -9` or a power cut.
//! 3. The parent sees the child die with status 137, and calls `resume` on the same
//!    directory: the run continues from the checkpoint saved after `parse`.
//! 4. Every step leaves two traces: a line in `executions.log` (a side effect outside the
//!    run, like a call to another service) and its name in the context's `EventLog` (saved
//!    with the checkpoint). Comparing them shows what a checkpoint guarantees:
//!    - `download` and `parse` ran once, in the child: completed steps are not re-executed;
//!    - `enrich` ran twice, once in each process: the interrupted step runs again, so steps
//!      are executed *at least* once and their outside side effects should be idempotent;
//!    - the context holds every step exactly once: the crashed step's change to it was never
//!      saved, and the resumed run started from the saved context.
//!
//! How the child is started: `std::env::current_exe()` is the program that is running, which
//! is the example binary under `cargo run`, but the example's test harness under
//! `cargo test`. So the child mode is reached the same way in both: through the environment
//! variable, checked by `main` in the binary and by the test `tests::child_entry` in the
//! harness. The parent passes the harness the arguments that select that one test
//! (`tests::child_entry --exact --nocapture --test-threads=1`) and the binary none. In an
//! ordinary test run the variable is unset and `child_entry` does nothing. The child's
//! output goes to files in the directory (no pipe to fill up), and a child that has not
//! exited after a minute is killed, so the parent never hangs.

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floxide::*;
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn Error + Send + Sync>;

/// Set, to the run's directory, in the child's environment only.
const CHILD_ENV: &str = "FLOXIDE_CHECKPOINT_CHILD";
/// The step the child dies in.
const CRASH_IN: &str = "enrich";
/// The child's exit status: 128 + 9, as after `kill -9`.
const CRASH_STATUS: i32 = 137;
/// The checkpoint id.
const RUN_ID: &str = "order-42";
/// The run's input.
const INPUT: &str = "order 42";

/// The context: the steps that completed, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    /// One entry per completed step.
    pub steps: EventLog<String>,
}

/// Effects outside the run: one line per step execution in `executions.log`, and, in the
/// child, the crash.
#[derive(Debug, Clone)]
pub struct Effects {
    log: PathBuf,
    process: &'static str,
    crash_in: Option<&'static str>,
}

impl Effects {
    fn new(dir: &Path, process: &'static str, crash_in: Option<&'static str>) -> Self {
        Effects {
            log: dir.join("executions.log"),
            process,
            crash_in,
        }
    }

    /// Appends `<process> <step>` to the executions log.
    fn record(&self, step: &str) -> Result<(), FloxideError> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(FloxideError::generic)?;
        writeln!(file, "{} {step}", self.process).map_err(FloxideError::generic)
    }

    /// Kills the process if it is the one meant to crash in `step`.
    fn maybe_crash(&self, step: &str) {
        if self.crash_in == Some(step) {
            println!("{}: crashing halfway through `{step}`", self.process);
            std::process::exit(CRASH_STATUS);
        }
    }

    /// The lines of the executions log.
    fn executions(&self) -> std::io::Result<Vec<String>> {
        Ok(std::fs::read_to_string(&self.log)?
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

node! {
    /// One step of the pipeline: a side effect, a change to the context, then (in the child,
    /// in `enrich`) the crash.
    pub struct Step { name: &'static str, effects: Effects };
    context = Journal;
    input = String;
    output = String;
    |ctx, text| {
        self.effects.record(self.name)?;
        ctx.steps.append(self.name.to_owned());
        self.effects.maybe_crash(self.name);
        println!("{}: `{}` done", self.effects.process, self.name);
        Ok(Transition::Next(format!("{text} > {}", self.name)))
    }
}

workflow! {
    /// Four steps in a row; the output lists them.
    pub struct Pipeline { download: Step, parse: Step, enrich: Step, publish: Step }
    context = Journal;
    start = download;
    edges { download => [parse]; parse => [enrich]; enrich => [publish]; publish => []; }
}

fn pipeline(effects: &Effects) -> Pipeline {
    let step = |name| Step {
        name,
        effects: effects.clone(),
    };
    Pipeline {
        download: step("download"),
        parse: step("parse"),
        enrich: step("enrich"),
        publish: step("publish"),
    }
}

fn checkpoints(dir: &Path) -> FileCheckpointStore {
    FileCheckpointStore::new(dir.join("checkpoints"))
}

/// The directory named in the environment when this process is the child.
fn child_dir() -> Option<PathBuf> {
    std::env::var_os(CHILD_ENV).map(PathBuf::from)
}

/// The child: runs the pipeline from the start and dies in `enrich`. Never returns: should
/// the run end without the crash, the child exits with status 1.
async fn child(dir: &Path) {
    let wf = pipeline(&Effects::new(dir, "child", Some(CRASH_IN)));
    let ctx = WorkflowCtx::new(Journal::default());
    let result = wf
        .run_with_checkpoint(&ctx, INPUT.to_owned(), &checkpoints(dir), RUN_ID)
        .await;
    eprintln!("child: the run was meant to crash, but it returned {result:?}");
    std::process::exit(1);
}

/// A fresh directory under the temp dir, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> std::io::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("floxide-checkpoint-{}-{nanos}", std::process::id()));
        // `create_dir`, not `create_dir_all`: fails rather than reuse an existing directory.
        std::fs::create_dir(&path)?;
        Ok(ScratchDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts this program again as the child, with `args`, and waits for it to exit (at most a
/// minute, then it is killed). Its output goes to `child.out` and `child.err` in `dir`.
async fn run_child(dir: &Path, args: &[&str]) -> Result<ExitStatus, BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        .env(CHILD_ENV, dir)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("child.out"))?)
        .stderr(File::create(dir.join("child.err"))?)
        .spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if tokio::time::Instant::now() >= deadline {
            child.kill()?;
            child.wait()?;
            return Err("the child process did not exit within a minute".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the demo observed.
#[derive(Debug)]
struct Outcome {
    /// The child's exit code.
    child_status: Option<i32>,
    /// The steps in the checkpoint the child left, and the node it was about to run.
    saved_steps: Vec<String>,
    saved_next: Vec<&'static str>,
    /// What `resume` returned.
    output: String,
    /// What running the finished id again returned.
    rerun: String,
    /// Every step execution, in both processes.
    executions: Vec<String>,
    /// The context of the finished run.
    journal: Vec<String>,
}

/// The parent: crash a child, resume its run, compare. `child_args` select the child mode
/// of this program (none for the example binary).
async fn demo(child_args: &[&str]) -> Result<Outcome, BoxError> {
    let dir = ScratchDir::new()?;
    let store = checkpoints(dir.path());
    println!("run directory: {}", dir.path().display());

    let status = run_child(dir.path(), child_args).await?;
    for line in std::fs::read_to_string(dir.path().join("child.out"))?.lines() {
        println!("  | {line}");
    }
    if status.code() != Some(CRASH_STATUS) {
        let stderr = std::fs::read_to_string(dir.path().join("child.err"))?;
        return Err(format!(
            "expected the child to crash with {CRASH_STATUS}, got {status}:\n{stderr}"
        )
        .into());
    }

    let saved: Checkpoint<Journal, PipelineWorkItem> = CheckpointStore::load(&store, RUN_ID)
        .await?
        .ok_or("the child saved no checkpoint")?;
    let saved_steps: Vec<String> = saved.context.steps.events().collect();
    let saved_next: Vec<&'static str> = saved.queue.iter().map(WorkItem::node_name).collect();

    let effects = Effects::new(dir.path(), "parent", None);
    let wf = pipeline(&effects);
    let output = wf.resume(&store, RUN_ID).await?;

    // The run is recorded as finished: running the id again executes nothing.
    let rerun = wf
        .run_with_checkpoint(
            &WorkflowCtx::new(Journal::default()),
            INPUT.to_owned(),
            &store,
            RUN_ID,
        )
        .await?;

    let finished: Checkpoint<Journal, PipelineWorkItem> = CheckpointStore::load(&store, RUN_ID)
        .await?
        .ok_or("no checkpoint after the run")?;
    let outcome = Outcome {
        child_status: status.code(),
        saved_steps,
        saved_next,
        output,
        rerun,
        executions: effects.executions()?,
        journal: finished.context.steps.events().collect(),
    };
    Ok(outcome)
}

/// Prints what the demo observed.
fn report(out: &Outcome) {
    println!("the child died with status {:?}", out.child_status);
    println!(
        "its last checkpoint: {:?} done, {:?} next",
        out.saved_steps, out.saved_next
    );
    println!("resumed:   {}", out.output);
    println!("run again: {} (the recorded output)", out.rerun);
    println!("{:<10} {:<13} in the context", "step", "executions");
    for step in ["download", "parse", "enrich", "publish"] {
        let ran: Vec<&str> = out
            .executions
            .iter()
            .filter_map(|line| line.strip_suffix(step)?.strip_suffix(' '))
            .collect();
        let saved = out.journal.iter().filter(|s| *s == step).count();
        println!("{step:<10} {:<13} {saved}", ran.join("+"));
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    if let Some(dir) = child_dir() {
        child(&dir).await;
    }
    report(&demo(&[]).await?);
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The arguments that make the test harness run `tests::child_entry` alone.
    const CHILD_ARGS: &[&str] = &[
        "tests::child_entry",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ];

    /// The child's entry point when the parent is the test harness; does nothing in an
    /// ordinary test run.
    #[tokio::test]
    async fn child_entry() {
        if let Some(dir) = super::child_dir() {
            super::child(&dir).await;
        }
    }

    #[tokio::test]
    async fn a_killed_run_resumes_in_another_process() {
        let out = super::demo(CHILD_ARGS).await.unwrap();
        super::report(&out);
        assert_eq!(out.child_status, Some(super::CRASH_STATUS));
        assert_eq!(out.saved_steps, ["download", "parse"]);
        assert_eq!(out.saved_next, ["enrich"]);
        let expected = "order 42 > download > parse > enrich > publish";
        assert_eq!(out.output, expected);
        assert_eq!(out.rerun, expected);
        assert_eq!(
            out.executions,
            [
                "child download",
                "child parse",
                "child enrich",
                "parent enrich",
                "parent publish",
            ]
        );
        assert_eq!(out.journal, ["download", "parse", "enrich", "publish"]);
    }
}
