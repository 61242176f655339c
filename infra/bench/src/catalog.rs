//! What the buyers of a sale want: one hot product (the single-product scenario), or a
//! catalog — one hot SKU that half the buyers want and a long tail that the other half pick
//! from by Zipf's law, from a fixed seed, so every run sells the same demand.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// The seed that orders the catalog's tail buyers.
pub const CATALOG_SEED: u64 = 13;
/// Zipf's exponent for the tail: the k-th most wanted SKU draws 1/k of the first one's buyers.
pub const ZIPF_S: f64 = 1.0;
/// Units of each tail SKU.
pub const TAIL_STOCK: u64 = 4;

/// The SKUs on sale, their stock, and which SKU each buyer wants.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Units of each SKU, by index; SKU 0 is the hot one.
    pub stocks: Vec<u64>,
    /// The SKU (index into `stocks`) each buyer orders one unit of.
    pub choice: Vec<u32>,
}

impl Catalog {
    /// One product with every unit, wanted by every buyer.
    pub fn single(stock: u64, buyers: usize) -> Self {
        Self {
            stocks: vec![stock],
            choice: vec![0; buyers],
        }
    }

    /// Half of `stock` on one hot SKU that even-numbered buyers want; the other half as
    /// [`TAIL_STOCK`] units on each of `stock / 2 / TAIL_STOCK` tail SKUs, which the
    /// odd-numbered buyers share by Zipf(`s`): the k-th tail SKU gets N/(k^s·H) of them
    /// (largest remainders rounded up, so the shares sum to N), in an order shuffled with
    /// `seed`. Exact shares rather than independent draws, so that every SKU is wanted beyond
    /// its stock (250 independent draws leave some of the rarest SKUs at 4 buyers or fewer).
    /// The defaults (2,000 units) give 1,000 hot units and 250 tail SKUs. Buyers alternate so
    /// both halves arrive throughout the sale.
    pub fn zipf(stock: u64, buyers: usize, s: f64, seed: u64) -> Self {
        let hot = stock.div_ceil(2);
        let tail_skus = ((stock - hot) / TAIL_STOCK).max(1) as usize;
        let mut stocks = vec![hot];
        stocks.extend(std::iter::repeat_n(TAIL_STOCK, tail_skus));
        let tail_buyers = buyers / 2;
        let weights: Vec<f64> = (1..=tail_skus).map(|k| (k as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let exact: Vec<f64> = weights
            .iter()
            .map(|w| w / total * tail_buyers as f64)
            .collect();
        let mut shares: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
        let mut by_remainder: Vec<usize> = (0..tail_skus).collect();
        by_remainder.sort_by(|&a, &b| {
            (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor()))
        });
        let short = tail_buyers - shares.iter().sum::<usize>();
        for &k in by_remainder.iter().take(short) {
            shares[k] += 1;
        }
        let mut picks: Vec<u32> = shares
            .iter()
            .enumerate()
            .flat_map(|(k, &n)| std::iter::repeat_n(k as u32 + 1, n))
            .collect();
        picks.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut picks = picks.into_iter();
        let choice = (0..buyers)
            .map(|b| match b % 2 {
                0 => 0,
                _ => picks.next().unwrap_or(1),
            })
            .collect();
        Self { stocks, choice }
    }

    pub fn skus(&self) -> usize {
        self.stocks.len()
    }

    pub fn total_stock(&self) -> u64 {
        self.stocks.iter().sum()
    }

    /// The SKU name of index `i` on a run's base name: the base itself for a single product,
    /// `{base}-{i:03}` in a catalog.
    pub fn sku(&self, base: &str, i: usize) -> String {
        if self.stocks.len() == 1 {
            base.to_owned()
        } else {
            format!("{base}-{i:03}")
        }
    }

    /// Buyers who want each SKU.
    pub fn demand(&self) -> Vec<u64> {
        let mut d = vec![0; self.stocks.len()];
        for &c in &self.choice {
            d[c as usize] += 1;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_catalog_is_one_hot_sku_and_250_tail_skus_each_wanted_beyond_its_stock() {
        let c = Catalog::zipf(2_000, 20_000, ZIPF_S, CATALOG_SEED);
        assert_eq!(c.skus(), 251);
        assert_eq!((c.stocks[0], c.total_stock()), (1_000, 2_000));
        let demand = c.demand();
        assert_eq!(demand[0], 10_000);
        assert_eq!(demand.iter().sum::<u64>(), 20_000);
        // Zipf: the first tail SKU is the most wanted, and even the least wanted one draws
        // more buyers than it has units.
        assert!(
            demand[1] > demand[250] * 50,
            "{} vs {}",
            demand[1],
            demand[250]
        );
        assert!(
            demand.iter().zip(&c.stocks).all(|(d, s)| d > s),
            "{demand:?}"
        );
        // The same seed, the same buyers.
        assert_eq!(
            c.choice,
            Catalog::zipf(2_000, 20_000, ZIPF_S, CATALOG_SEED).choice
        );
        assert_eq!(c.sku("B", 7), "B-007");
        assert_eq!(Catalog::single(5, 3).sku("B", 0), "B");
    }
}
