//! Sampling: which records, in which order, for which rank, each epoch.
//!
//! The order of an epoch depends on `(seed, epoch)` alone (ffcv's
//! `traversal_order/random.py` does the same), so any process can recompute
//! it: that is what makes distributed shares consistent and mid-epoch
//! resume exact.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// Epoch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Order {
    /// 0, 1, 2, ... (evaluation).
    Sequential,
    /// A full random permutation drawn from `(seed, epoch)` (training).
    Shuffled,
}

/// What to do when the dataset does not divide evenly among ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Remainder {
    /// Repeat samples from the start of the order so every rank gets
    /// `ceil(n / world)` (PyTorch's `DistributedSampler`).
    #[default]
    Pad,
    /// Drop the last `n % world` samples of the order so every rank gets `floor(n / world)`.
    Drop,
    /// Every sample exactly once: the first `n % world` ranks get one more
    /// (evaluation split over ranks, whose counts are then summed).
    Uneven,
}

/// This process's place in a distributed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distributed {
    /// This rank, `0..world_size`.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// How the remainder is handled.
    pub remainder: Remainder,
}

impl Default for Distributed {
    fn default() -> Self {
        Distributed {
            rank: 0,
            world_size: 1,
            remainder: Remainder::Pad,
        }
    }
}

use crate::seed::mix_seed;

/// The records this rank visits in `epoch`, in order.
pub fn epoch_indices(
    len: usize,
    order: Order,
    seed: u64,
    epoch: u64,
    dist: Distributed,
) -> Vec<u32> {
    assert!(
        dist.world_size >= 1 && dist.rank < dist.world_size,
        "rank {} of {}",
        dist.rank,
        dist.world_size
    );
    assert!(len <= u32::MAX as usize, "at most 2^32 records");
    let mut all: Vec<u32> = (0..len as u32).collect();
    if order == Order::Shuffled {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(mix_seed(&[seed, epoch, 0x5348_5546]));
        all.shuffle(&mut rng);
    }
    let w = dist.world_size;
    let total = match dist.remainder {
        Remainder::Pad => len.div_ceil(w) * w,
        Remainder::Drop => len / w * w,
        Remainder::Uneven => len,
    };
    if len == 0 {
        return Vec::new();
    }
    (dist.rank..total)
        .step_by(w)
        .map(|i| all[i % len])
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn uneven_shares_cover_every_record_once() {
        for world in 1..5 {
            let mut all: Vec<u32> = (0..world)
                .flat_map(|rank| {
                    epoch_indices(
                        11,
                        Order::Sequential,
                        0,
                        0,
                        Distributed {
                            rank,
                            world_size: world,
                            remainder: Remainder::Uneven,
                        },
                    )
                })
                .collect();
            all.sort();
            assert_eq!(all, (0..11).collect::<Vec<u32>>());
        }
    }

    use super::*;
    use std::collections::HashSet;

    #[test]
    fn shuffled_is_a_permutation_that_changes_with_epoch_and_seed() {
        let a = epoch_indices(1000, Order::Shuffled, 7, 0, Distributed::default());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(
            a,
            epoch_indices(1000, Order::Shuffled, 7, 0, Distributed::default())
        );
        assert_ne!(
            a,
            epoch_indices(1000, Order::Shuffled, 7, 1, Distributed::default())
        );
        assert_ne!(
            a,
            epoch_indices(1000, Order::Shuffled, 8, 0, Distributed::default())
        );
        assert_eq!(
            epoch_indices(5, Order::Sequential, 7, 3, Distributed::default()),
            vec![0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn distributed_shares_are_disjoint_equal_and_covering() {
        for (len, world) in [(10, 3), (9, 3), (1000, 8), (7, 8), (1, 2)] {
            for remainder in [Remainder::Pad, Remainder::Drop] {
                let shares: Vec<Vec<u32>> = (0..world)
                    .map(|rank| {
                        epoch_indices(
                            len,
                            Order::Shuffled,
                            1,
                            2,
                            Distributed {
                                rank,
                                world_size: world,
                                remainder,
                            },
                        )
                    })
                    .collect();
                let sizes: HashSet<usize> = shares.iter().map(Vec::len).collect();
                assert_eq!(sizes.len(), 1, "equal lengths: {len} {world} {remainder:?}");
                let all: Vec<u32> = shares.iter().flatten().copied().collect();
                let distinct: HashSet<u32> = all.iter().copied().collect();
                match remainder {
                    Remainder::Pad => {
                        assert_eq!(distinct.len(), len, "covering");
                        assert_eq!(all.len(), len.div_ceil(world) * world);
                    }
                    Remainder::Drop => {
                        assert_eq!(all.len(), len / world * world);
                        assert_eq!(distinct.len(), all.len(), "disjoint");
                    }
                    Remainder::Uneven => unreachable!("uneven_shares_cover_every_record_once"),
                }
                if len % world == 0 {
                    assert_eq!(distinct.len(), all.len(), "disjoint when it divides");
                }
            }
        }
    }
}
