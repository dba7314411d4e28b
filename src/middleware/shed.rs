//! Load shedding: at most `max_concurrent_requests` requests in progress, one count shared by
//! every connection of a stack; past it a request is refused at once (503), never queued.
//! An atomic counter, not a semaphore: nothing ever waits for a slot (callgrind: tower's
//! `LoadShed` + `ConcurrencyLimit` cost about 470 instructions per request more than this).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::load_shed::error::Overloaded;
use tower::{Layer, Service};

use crate::error::BoxError;

#[derive(Clone)]
pub struct ShedLayer {
    in_progress: Arc<AtomicUsize>,
    max: usize,
}

impl ShedLayer {
    pub fn new(max: usize) -> ShedLayer {
        ShedLayer {
            in_progress: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            in_progress: self.in_progress.clone(),
            max: self.max,
        }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    in_progress: Arc<AtomicUsize>,
    max: usize,
}

/// One request counted in progress until its response future ends (completes or is dropped).
struct InProgress(Arc<AtomicUsize>);

impl InProgress {
    fn enter(count: &Arc<AtomicUsize>, max: usize) -> Option<InProgress> {
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InProgress(count.clone()))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S, Req> Service<Req> for Shed<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match InProgress::enter(&self.in_progress, self.max) {
            Some(counted) => ShedFuture::Admitted {
                fut: self.inner.call(req),
                _counted: counted,
            },
            None => ShedFuture::Shed,
        }
    }
}

pin_project! {
    #[project = Projection]
    pub enum ShedFuture<F> {
        Admitted { #[pin] fut: F, _counted: InProgress },
        Shed,
    }
}

impl<F, T, E> Future for ShedFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projection::Admitted { fut, .. } => {
                Poll::Ready(ready!(fut.poll(cx)).map_err(Into::into))
            }
            Projection::Shed => Poll::Ready(Err(Overloaded::new().into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service whose responses wait until `release` is notified.
    fn held(
        release: Arc<tokio::sync::Notify>,
    ) -> impl Service<(), Response = (), Error = BoxError, Future: Unpin> {
        tower::service_fn(move |()| {
            let release = release.clone();
            Box::pin(async move {
                release.notified().await;
                Ok::<(), BoxError>(())
            })
        })
    }

    #[tokio::test]
    async fn past_the_limit_a_request_is_refused_at_once() {
        let release = Arc::new(tokio::sync::Notify::new());
        let mut shed = ShedLayer::new(2).layer(held(release));
        let (_first, _second) = (shed.call(()), shed.call(()));

        let third = shed.call(()).await;

        let err = third.expect_err("a third request past a limit of 2");
        assert!(err.is::<Overloaded>(), "{err}");
    }

    #[tokio::test]
    async fn a_finished_request_frees_its_place() {
        let release = Arc::new(tokio::sync::Notify::new());
        let mut shed = ShedLayer::new(1).layer(held(release.clone()));
        let first = shed.call(());
        release.notify_one();
        first.await.expect("the first is served");

        release.notify_one();
        let second = shed.call(()).await;

        assert!(second.is_ok(), "{second:?}");
    }

    #[tokio::test]
    async fn a_dropped_request_frees_its_place() {
        let release = Arc::new(tokio::sync::Notify::new());
        let mut shed = ShedLayer::new(1).layer(held(release.clone()));
        drop(shed.call(()));

        release.notify_one();
        let next = shed.call(()).await;

        assert!(next.is_ok(), "{next:?}");
    }
}
