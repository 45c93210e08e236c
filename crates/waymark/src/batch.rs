//! Group commit: requests from many tasks handed to the store in one call.
//!
//! A [`Batcher`] owns a task that takes whatever requests have piled up (up to a maximum),
//! runs them together, and answers each caller. There is no waiting for a batch to fill:
//! while one batch is in the store the next one gathers, so a lone request goes through
//! at once and a thousand concurrent ones share a transaction.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

type Request<I, O> = (I, oneshot::Sender<O>);

/// A thread with a runtime of its own for the tasks that talk to the store. A batch goes
/// back and forth to the database a few times; on the main runtime each of those answers
/// would wait in line behind the thousands of customer tasks a batch has just woken, and
/// the database would sit idle meanwhile.
pub struct IoThread {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl IoThread {
    /// Starts the thread; it ends when the `IoThread` is dropped.
    ///
    /// # Panics
    /// The OS refuses a thread or the runtime's resources.
    pub fn start() -> IoThread {
        let (stop, stopped) = oneshot::channel::<()>();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("waymark-store-io".to_owned())
            .spawn(move || {
                // Two workers: one can read a loaded batch's rows while the other keeps
                // the writer busy.
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("waymark-store-io")
                    .enable_all()
                    .build()
                    .expect("a runtime for the store's I/O");
                let _ = handle_tx.send(runtime.handle().clone());
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .expect("a thread for the store's I/O");
        let handle = handle_rx.recv().expect("the store I/O thread starts");
        IoThread {
            handle,
            _stop: stop,
        }
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

pub struct Batcher<I, O> {
    requests: mpsc::UnboundedSender<Request<I, O>>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the batching task on the current Tokio runtime. `run` gets up to `max`
    /// requests and returns one answer per request, in order. The task ends when the
    /// batcher is dropped.
    pub fn spawn<F, Fut>(io: &tokio::runtime::Handle, max: usize, mut run: F) -> Batcher<I, O>
    where
        F: FnMut(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (requests, mut queue) = mpsc::unbounded_channel::<Request<I, O>>();
        io.spawn(async move {
            let mut items = Vec::with_capacity(max);
            let mut replies = Vec::with_capacity(max);
            while let Some((item, reply)) = queue.recv().await {
                items.push(item);
                replies.push(reply);
                while items.len() < max {
                    match queue.try_recv() {
                        Ok((item, reply)) => {
                            items.push(item);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                let answers = run(std::mem::replace(&mut items, Vec::with_capacity(max))).await;
                for (reply, answer) in replies.drain(..).zip(answers) {
                    let _ = reply.send(answer);
                }
            }
        });
        Batcher { requests }
    }

    /// Hands `item` to the next batch and waits for its answer; `None` if the batching
    /// task is gone (the runtime is shutting down).
    pub async fn call(&self, item: I) -> Option<O> {
        let (reply, answer) = oneshot::channel();
        self.requests.send((item, reply)).ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent calls are answered in batches, each caller with its own answer.
    #[tokio::test]
    async fn concurrent_calls_share_batches_and_get_their_own_answers() {
        let (sizes_tx, mut sizes) = mpsc::unbounded_channel();
        let batcher = std::sync::Arc::new(Batcher::spawn(
            &tokio::runtime::Handle::current(),
            4,
            move |items: Vec<u32>| {
                let _ = sizes_tx.send(items.len());
                async move { items.into_iter().map(|i| i * 10).collect() }
            },
        ));
        let calls: Vec<_> = (0..10)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.call(i).await })
            })
            .collect();
        for (i, call) in (0..10).zip(calls) {
            assert_eq!(call.await.unwrap(), Some(i * 10));
        }
        let mut total = 0;
        while let Ok(size) = sizes.try_recv() {
            assert!((1..=4).contains(&size), "a batch of {size}");
            total += size;
        }
        assert_eq!(total, 10);
    }
}
