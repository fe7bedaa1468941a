//! A read of a step's statistics started when the step is queued and finished a step later.
//!
//! Burn's `into_data_async` is polled once at the start, which queues the copy behind the
//! step's kernels (on a CubeCL device: in the same queue, so the copy waits for this step only,
//! not for the steps queued after it); finishing waits for it where it has not completed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use burn::tensor::{DType, Tensor, TensorData};
use gradguard::GuardError;

type ReadFuture = Pin<Box<dyn Future<Output = Result<TensorData, String>> + Send>>;

/// A read in flight, or already done.
pub(super) enum PendingRead {
    Done(Result<TensorData, String>),
    /// In a mutex only so that the optimizer holding it stays `Sync`.
    InFlight(Mutex<ReadFuture>),
}

impl PendingRead {
    /// Starts reading `parts` (one-dimensional f32 tensors on one device), concatenated;
    /// `None` when there is nothing to read.
    pub fn start(parts: Vec<Tensor<1>>) -> Option<Self> {
        if parts.is_empty() {
            return None;
        }
        let read = Tensor::cat(parts, 0).into_data_async();
        let mut future: ReadFuture =
            Box::pin(async move { read.await.map_err(|e| format!("{e:?}")) });
        let mut cx = Context::from_waker(Waker::noop());
        Some(match future.as_mut().poll(&mut cx) {
            Poll::Ready(done) => PendingRead::Done(done),
            Poll::Pending => PendingRead::InFlight(Mutex::new(future)),
        })
    }

    /// The values read, waiting for them where they are not there yet.
    pub fn finish(self) -> Result<Vec<f32>, GuardError> {
        let data = match self {
            PendingRead::Done(done) => done,
            PendingRead::InFlight(future) => {
                let future = future.into_inner().unwrap_or_else(|p| p.into_inner());
                futures_lite::future::block_on(future)
            }
        };
        data.map_err(|e| GuardError::DeviceRead(format!("a step's statistics: {e}")))?
            .convert_dtype(DType::F32)
            .try_into_vec::<f32>()
            .map_err(|e| GuardError::DeviceRead(format!("a step's statistics: {e:?}")))
    }
}
