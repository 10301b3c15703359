//! Tests of the supervised-task shell's stop: the `StopActor` deadline is
//! one budget for the body's drain and the wait for its task together; of
//! a restart: a new task does not inherit what the old one said; and of the
//! start count /health's grace reads (`starting_ms`).
//!
//! They run on a paused tokio clock (the actix system and the task share one
//! current-thread runtime), so the durations asserted are virtual and exact,
//! not wall-clock timings.

use std::time::Duration;

use actix::prelude::*;
use futures::future::{BoxFuture, FutureExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::SupervisedTask;
use crate::actors::messages::{ActorName, ChildGaveUp, ComponentEvent, Lifecycle, Ping, StopActor};
use crate::actors::supervision::{Progress, TaskBody, TaskError, TaskFuture, TaskInfo};
use crate::actors::ActorDeps;
use crate::config::Config;
use crate::shutdown::Shutdown;

#[derive(Clone, Default, serde::Serialize)]
struct Status {
    running: bool,
    /// Waits for another instance, as intended (counts as running).
    standby: bool,
}

impl Progress for Status {
    fn running(&self) -> bool {
        self.running || self.standby
    }
    fn standby(&self) -> bool {
        self.standby
    }
    fn set_running(&mut self, running: bool) {
        self.running = running;
    }
    fn new_task(&mut self) {
        self.running = false;
        self.standby = false;
    }
}

/// A task that never ends by itself after its signal (it must be aborted)
/// and a drain that takes `drain_factor` times the deadline it is given.
struct Stubborn {
    drain_factor: u32,
    status: watch::Sender<Status>,
}

impl TaskBody for Stubborn {
    const INFO: TaskInfo = TaskInfo { actor: ActorName::Projection, task: "stubborn", on_abort: "nothing" };
    type Status = Status;

    fn spawn(&mut self, _deps: &ActorDeps, mut shutdown: Shutdown) -> Result<TaskFuture, TaskError> {
        let status = self.status.clone();
        Ok(async move {
            status.send_modify(|s| s.running = true);
            shutdown.recv().await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        .boxed())
    }

    fn drain(&self, _deps: &ActorDeps, deadline: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep(deadline * self.drain_factor).boxed()
    }
}

/// Hears the shell's reports (parent and health check) and drops them.
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<ChildGaveUp> for Sink {
    type Result = ();
    fn handle(&mut self, _msg: ChildGaveUp, _ctx: &mut Context<Self>) {}
}

impl Handler<ComponentEvent> for Sink {
    type Result = ();
    fn handle(&mut self, _msg: ComponentEvent, _ctx: &mut Context<Self>) {}
}

/// Runs `test` in an actix system on a paused current-thread tokio clock,
/// with the actors' dependencies over a fresh SQLite store.
fn on_paused_clock<T, F: std::future::Future<Output = T>>(test: impl FnOnce(ActorDeps) -> F) -> T {
    let dir = tempfile::tempdir().unwrap();
    let system = System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
    });
    system.block_on(async move {
        let cfg = Config::default();
        let store = crate::store::sqlite::SqliteStore::open(dir.path().join("shell.db"), cfg.store.sqlite.clone())
            .await
            .unwrap();
        let deps = ActorDeps::new(cfg, store, crate::metrics::Metrics::new(), tokio::runtime::Handle::current());
        test(deps).await
    })
}

/// How long (virtual time) a `StopActor { deadline }` takes to answer for a
/// body whose drain takes `drain_factor` deadlines, and whether the task's
/// status still says running afterwards.
fn stop_takes(drain_factor: u32, deadline: Duration) -> (Duration, bool) {
    on_paused_clock(|deps| async move {
        let (status, status_rx) = watch::channel(Status::default());
        let sink = Sink.start();
        let body = Stubborn { drain_factor, status: status.clone() };
        let addr = SupervisedTask::new(deps, body, status, sink.clone().recipient(), sink.recipient()).start();
        let mut running = status_rx.clone();
        running.wait_for(|s| s.running).await.unwrap();
        assert_eq!(addr.send(Ping).await.unwrap(), Lifecycle::Running);
        let t0 = Instant::now();
        addr.send(StopActor { deadline }).await.unwrap();
        let took = t0.elapsed();
        let still_running = status_rx.borrow().running;
        (took, still_running)
    })
}

/// The stop answered at the deadline (virtual clock: timers fire on the
/// millisecond), not before and not a second deadline later.
fn answered_at_deadline(took: Duration, deadline: Duration) {
    assert!(
        took >= deadline && took < deadline + Duration::from_millis(10),
        "the stop answered after {took:?}, the deadline was {deadline:?}"
    );
}

/// A drain that uses its whole deadline leaves the task nothing: it is
/// aborted at the deadline, not one more deadline later.
#[test]
fn drain_and_wait_share_one_deadline() {
    let deadline = Duration::from_secs(20);
    let (took, running) = stop_takes(1, deadline);
    answered_at_deadline(took, deadline);
    assert!(!running, "the shell clears the running flag when it stops");
}

/// A drain that ignores its deadline is cut off at it.
#[test]
fn an_overrunning_drain_is_cut_off_at_the_deadline() {
    let deadline = Duration::from_secs(5);
    let (took, _) = stop_takes(10, deadline);
    answered_at_deadline(took, deadline);
}

/// Without a drain the task gets the whole deadline, then is aborted.
#[test]
fn a_task_that_ignores_its_signal_is_aborted_at_the_deadline() {
    let deadline = Duration::from_secs(3);
    let (took, _) = stop_takes(0, deadline);
    answered_at_deadline(took, deadline);
}

/// A first task that says it is a standby, then fails; the next one says
/// nothing (it has not read its lease yet).
struct StandbyThenSilent {
    spawned: u32,
    status: watch::Sender<Status>,
}

impl TaskBody for StandbyThenSilent {
    const INFO: TaskInfo = TaskInfo { actor: ActorName::Projection, task: "standby", on_abort: "nothing" };
    type Status = Status;

    fn spawn(&mut self, _deps: &ActorDeps, _shutdown: Shutdown) -> Result<TaskFuture, TaskError> {
        self.spawned += 1;
        let (first, status) = (self.spawned == 1, self.status.clone());
        Ok(async move {
            if first {
                status.send_modify(|s| s.standby = true);
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Err(TaskError::Failed("lost its store".into()));
            }
            std::future::pending::<()>().await;
            Ok(())
        }
        .boxed())
    }
}

/// Review finding: a restarted standby's new task looked running (the old
/// task's standby role stayed on the channel) before it had read its lease,
/// so /health said "standby" and the start grace never applied.
#[test]
fn a_restarted_task_does_not_inherit_the_old_tasks_role() {
    on_paused_clock(|deps| async move {
        let (status, status_rx) = watch::channel(Status::default());
        let sink = Sink.start();
        let body = StandbyThenSilent { spawned: 0, status: status.clone() };
        // Under a supervisor, as the coordinator starts it: a failure restarts it.
        let addr = actix::Supervisor::start(move |_| {
            SupervisedTask::new(deps, body, status, sink.clone().recipient(), sink.recipient())
        });
        status_rx.clone().wait_for(|s| s.standby).await.unwrap();
        // The first task fails after 1 s; the restart comes after its backoff.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let st = addr.send(super::super::GetTaskStatus::<Status>::new()).await.unwrap();
        assert_eq!(st.restarts_in_window, 1, "restarted once");
        assert!(!st.running, "the new task has said nothing: not running");
        assert!(st.starting_ms.is_some(), "it is starting");
    });
}

/// A task whose status the test writes: it runs until aborted.
struct Puppet;

impl TaskBody for Puppet {
    const INFO: TaskInfo = TaskInfo { actor: ActorName::Projection, task: "puppet", on_abort: "nothing" };
    type Status = Status;

    fn spawn(&mut self, _deps: &ActorDeps, _shutdown: Shutdown) -> Result<TaskFuture, TaskError> {
        Ok(std::future::pending::<Result<(), TaskError>>().boxed())
    }
}

/// Review finding: a standby spawned an hour ago that takes the lease over
/// and starts its term was reported "spawned 3600 s ago and still
/// starting" (Degraded at once); its start is counted from its takeover, so
/// it gets the start grace like a fresh task. An active task that stops
/// running gets no such grace (last-read finding: a lost lease hid its lag).
#[test]
fn a_standby_that_takes_over_counts_its_start_from_the_takeover_not_from_its_spawn() {
    on_paused_clock(|deps| async move {
        let (status, _rx) = watch::channel(Status::default());
        let sink = Sink.start();
        let addr =
            SupervisedTask::new(deps, Puppet, status.clone(), sink.clone().recipient(), sink.recipient()).start();
        let ask = || addr.send(super::super::GetTaskStatus::<Status>::new());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(ask().await.unwrap().starting_ms, Some(2_000), "a fresh task: counted from its spawn");
        status.send_modify(|s| s.standby = true);
        assert_eq!(ask().await.unwrap().starting_ms, None, "a standby runs as intended");
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        // The lease is taken over: no longer a standby, not running yet.
        status.send_modify(|s| s.standby = false);
        assert_eq!(ask().await.unwrap().starting_ms, Some(0), "counted from now, not from the spawn an hour ago");
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert_eq!(ask().await.unwrap().starting_ms, Some(40_000), "a term that never starts still leaves the grace");
        // Its term runs, then stops (a lost lease, a failed term): no new
        // grace, the count is the task's own since its spawn.
        status.send_modify(|s| s.running = true);
        assert_eq!(ask().await.unwrap().starting_ms, None, "running");
        status.send_modify(|s| s.running = false);
        assert_eq!(ask().await.unwrap().starting_ms, Some(3_642_000), "not running again: counted from the spawn");
    });
}
