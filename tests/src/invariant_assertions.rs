//! Assertions over the invariant checker (`flash_domain::invariant_check`), which every
//! scenario against the local stack ends with, and the product's audit read from DynamoDB.

use flash_aws::dynamo::ledger;
use flash_aws::DynamoStore;
use flash_domain::invariant_check::Audit;
use flash_domain::Sku;
use reconcile::ProductCheck;

pub async fn audit(store: &DynamoStore, sku: &str) -> Audit {
    let sku = Sku::parse(sku).expect("test SKUs are valid");
    ledger::audit(store, &sku)
        .await
        .expect("the audit reads the table")
}

pub trait AuditAssertions {
    /// Invariants 1, 2, 3 and 5, plus the purchase counters.
    fn assert_invariants(&self) -> &Self;
    /// Invariant 4: every accepted order was decided.
    fn assert_all_decided(&self) -> &Self;
    /// No order was refused as sold out while enough stock was left for it.
    fn assert_nothing_stranded(&self) -> &Self;

    /// A sale that ended clean: every invariant holds, every accepted order was decided and no
    /// unit was stranded.
    fn assert_clean(&self) -> &Self {
        self.assert_invariants()
            .assert_all_decided()
            .assert_nothing_stranded()
    }

    /// The checker reports a violation that `found` recognises.
    fn assert_violation(&self, found: impl Fn(&str) -> bool) -> &Self;
}

impl AuditAssertions for Audit {
    fn assert_invariants(&self) -> &Self {
        assert!(
            self.violations.is_empty(),
            "invariants violated for {}:\n{}",
            self.sku,
            self.violations.join("\n")
        );
        self
    }

    fn assert_all_decided(&self) -> &Self {
        assert_eq!(self.undecided(), 0, "undecided orders for {}", self.sku);
        self
    }

    fn assert_violation(&self, found: impl Fn(&str) -> bool) -> &Self {
        assert!(
            self.violations.iter().any(|v| found(v)),
            "{:?}",
            self.violations
        );
        self
    }

    fn assert_nothing_stranded(&self) -> &Self {
        assert_eq!(
            self.stranded(),
            0,
            "units stranded for {}: {self:?}",
            self.sku
        );
        self
    }
}

/// The reconciler's checks after a shard of `corrupted` was given units no delivery added: that
/// product breaks conservation and `clean` breaks nothing. The check of `corrupted`.
pub fn assert_conservation_broken<'a>(
    products: &'a [ProductCheck],
    corrupted: &str,
    clean: &str,
) -> &'a ProductCheck {
    let bad = products
        .iter()
        .find(|p| p.sku == corrupted)
        .expect("the corrupted product is listed");
    assert!(
        bad.violations.iter().any(|v| v.starts_with("conservation")),
        "{:?}",
        bad.violations
    );
    assert!(products
        .iter()
        .any(|p| p.sku == clean && p.violations.is_empty()));
    bad
}
