//! `NativeBootCancel`: lets `VM.close()` stop a boot that is still running.
//! The boot future is dropped on cancel; QEMU was spawned with
//! `kill_on_drop`, so it is killed and its temp dir removed with it.

use napi_derive::napi;
use tokio::sync::watch;

/// A cancel switch handed to `startVm`; `cancel()` makes that boot reject
/// with `vm_closed` and kills its QEMU. Cancelling after the boot finished
/// does nothing (close the NativeVm instead).
#[napi]
pub struct NativeBootCancel {
    tx: watch::Sender<bool>,
}

#[napi]
impl NativeBootCancel {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)] // napi constructors take no Default
    pub fn new() -> Self {
        Self {
            tx: watch::channel(false).0,
        }
    }

    /// Stop the boot this switch was given to (idempotent).
    #[napi]
    pub fn cancel(&self) {
        self.tx.send_replace(true);
    }
}

impl NativeBootCancel {
    /// Resolves once `cancel()` was called; never if the switch is dropped first.
    pub(crate) fn cancelled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            if rx.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
