//! Batch: one node run over every element of a `Vec`, a few at a time, results in order.
//!
//! Run with `cargo run --example batch`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use floxide::*;

node! {
    /// Looks up a price (simulated: takes longer for cheaper items), counting lookups in flight.
    pub struct Price { in_flight: Arc<AtomicUsize>, max_in_flight: Arc<AtomicUsize> };
    input = u32;
    output = u32;
    |_ctx, item| {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(u64::from(100 - item))).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(Transition::Next(item * 3))
    }
}

node! {
    /// Adds the prices up.
    pub struct Total {};
    input = Vec<u32>;
    output = (Vec<u32>, u32);
    |_ctx, prices| {
        let total = prices.iter().sum();
        Ok(Transition::Next((prices, total)))
    }
}

workflow! {
    /// Price every item, at most three lookups at a time, then total.
    pub struct Checkout { prices: BatchNode<(), Price>, total: Total }
    start = prices;
    edges { prices => [total]; total => []; }
}

async fn demo() -> Result<(Vec<u32>, u32, usize), FloxideError> {
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let price = Price {
        in_flight: Arc::default(),
        max_in_flight: max_in_flight.clone(),
    };
    let wf = Checkout {
        prices: BatchNode::new(price, 3),
        total: Total {},
    };
    let items = vec![10, 20, 30, 40, 50, 60, 70];
    let (prices, total) = wf.run(&WorkflowCtx::new(()), items).await?;
    let max = max_in_flight.load(Ordering::SeqCst);
    println!("prices {prices:?} (in item order), total {total}, at most {max} lookups at once");
    Ok((prices, total, max))
}

#[tokio::main]
async fn main() -> Result<(), FloxideError> {
    demo().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(start_paused = true)]
    async fn prices_come_back_in_order_three_at_a_time() {
        let (prices, total, max) = super::demo().await.unwrap();
        assert_eq!(prices, [30, 60, 90, 120, 150, 180, 210]);
        assert_eq!(total, 840);
        assert_eq!(max, 3);
    }
}
