//! Slots: one OS thread per slot (`slot-<n>`) running a current-thread tokio
//! runtime. Every subtask deployed to slot `n` is a task on that runtime, so a
//! slot uses at most one core (its KPU's CPU share) and its subtasks never
//! compete with the control plane's threads.
//!
//! The KPU budget of each slot is recorded here; memory and disk budgets are
//! enforced by the state backends that read it.

use crate::config::KpuConfig;
use std::future::Future;
use std::thread::JoinHandle;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the thread of slot {slot}")]
    Start {
        slot: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("slot {slot} does not exist (this TaskManager has {slots})")]
    NoSuchSlot { slot: u32, slots: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

struct Slot {
    runtime: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

pub struct SlotPool {
    slots: Vec<Slot>,
    kpu: KpuConfig,
}

impl SlotPool {
    /// Starts `n` slot threads.
    pub fn start(n: u32, kpu: KpuConfig) -> Result<SlotPool> {
        let mut slots = Vec::with_capacity(n as usize);
        for index in 0..n {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("slot-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    // Drives every task spawned on this slot until stopped;
                    // dropping the runtime then drops the remaining tasks.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })
                .map_err(|source| Error::Start {
                    slot: index,
                    source,
                })?;
            let runtime = handle_rx
                .recv()
                .map_err(|_| {
                    std::io::Error::other("slot thread exited before starting its runtime")
                })
                .and_then(|r| r)
                .map_err(|source| Error::Start {
                    slot: index,
                    source,
                })?;
            slots.push(Slot {
                runtime,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(SlotPool { slots, kpu })
    }

    pub fn len(&self) -> u32 {
        self.slots.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The budget of every slot.
    pub fn kpu(&self) -> &KpuConfig {
        &self.kpu
    }

    /// Runs `task` on slot `slot`'s thread.
    pub fn spawn<F>(&self, slot: u32, task: F) -> Result<tokio::task::JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let s = self.slots.get(slot as usize).ok_or(Error::NoSuchSlot {
            slot,
            slots: self.len(),
        })?;
        Ok(s.runtime.spawn(task))
    }

    /// Stops every slot thread (their remaining tasks are dropped) and waits
    /// for them to exit.
    pub fn shutdown(&mut self) {
        for s in &mut self.slots {
            if let Some(stop) = s.stop.take() {
                let _ = stop.send(());
            }
        }
        for s in &mut self.slots {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for SlotPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_sdk::bytesize::ByteSize;

    fn kpu() -> KpuConfig {
        KpuConfig {
            vcpu_millis: 1000,
            memory: ByteSize(1 << 20),
            disk: ByteSize(1 << 20),
        }
    }

    #[tokio::test]
    async fn spawn_runs_on_the_slot_thread() {
        let pool = SlotPool::start(2, kpu()).unwrap();
        let name = pool
            .spawn(1, async {
                std::thread::current().name().map(str::to_string)
            })
            .unwrap()
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("slot-1"));
    }

    #[test]
    fn spawn_unknown_slot_is_an_error() {
        let pool = SlotPool::start(1, kpu()).unwrap();
        assert!(matches!(
            pool.spawn(3, async {}),
            Err(Error::NoSuchSlot { slot: 3, slots: 1 })
        ));
    }
}
