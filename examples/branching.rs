//! Branching: a node returns an enum and each variant goes its own way.
//!
//! Run with `cargo run --example branching`.

use floxide::*;
use serde::{Deserialize, Serialize};

/// How an order is handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Route {
    /// Small orders ship at once.
    Ship(u32),
    /// Large orders need a manager's approval.
    Review(u32),
    /// Empty orders are rejected.
    Reject,
}

node! {
    /// Decides how an order of `amount` is handled.
    pub struct Triage { review_above: u32 };
    input = u32;
    output = Route;
    |_ctx, amount| {
        let route = match amount {
            0 => Route::Reject,
            a if a > self.review_above => Route::Review(a),
            a => Route::Ship(a),
        };
        Ok(Transition::Next(route))
    }
}

node! {
    /// Ships an order.
    pub struct Ship {};
    input = u32;
    output = String;
    |_ctx, amount| { Ok(Transition::Next(format!("shipped {amount}"))) }
}

node! {
    /// Sends an order to review.
    pub struct Review {};
    input = u32;
    output = String;
    |_ctx, amount| { Ok(Transition::Next(format!("review {amount}"))) }
}

node! {
    /// Rejects an order; a unit variant's successor receives `Default::default()`.
    pub struct Reject {};
    input = ();
    output = String;
    |_ctx, _unit| { Ok(Transition::Next("rejected".to_owned())) }
}

workflow! {
    /// Triage → ship | review | reject.
    pub struct Orders { triage: Triage, ship: Ship, review: Review, reject: Reject }
    start = triage;
    edges {
        triage => {
            Route::Ship(a) => [ship];
            Route::Review(a) => [review];
            Route::Reject => [reject];
        };
        ship => [];
        review => [];
        reject => [];
    }
}

async fn demo() -> Result<Vec<String>, FloxideError> {
    let wf = Orders {
        triage: Triage { review_above: 1000 },
        ship: Ship {},
        review: Review {},
        reject: Reject {},
    };
    let ctx = WorkflowCtx::new(());
    let mut outcomes = Vec::new();
    for amount in [40, 5000, 0] {
        let outcome = wf.run(&ctx, amount).await?;
        println!("order {amount}: {outcome}");
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

#[tokio::main]
async fn main() -> Result<(), FloxideError> {
    demo().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn every_variant_takes_its_branch() {
        let outcomes = super::demo().await.unwrap();
        assert_eq!(outcomes, ["shipped 40", "review 5000", "rejected"]);
    }
}
