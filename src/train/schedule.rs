//! Learning-rate schedules: the paper's "divide by 10 when the error
//! plateaus", a step schedule at given epochs, and an optional linear warm-up.

use serde::{Deserialize, Serialize};

/// How the learning rate falls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// Multiply by `factor` when the validation top-1 error has not improved
    /// by at least `threshold` (absolute, 0..1) for `patience` epochs.
    Plateau {
        /// Epochs without improvement before the learning rate falls.
        patience: usize,
        /// Smallest improvement of the error that counts.
        threshold: f64,
        /// Multiplier (0.1).
        factor: f64,
    },
    /// Multiply by `factor` at each of these epochs (fractional epochs allowed).
    Step {
        /// Epochs at which the rate falls.
        milestones: Vec<f64>,
        /// Multiplier (0.1).
        factor: f64,
    },
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Plateau {
            patience: 5,
            threshold: 1e-3,
            factor: 0.1,
        }
    }
}

/// The schedule's state (saved in checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Learning rate before decay and warm-up.
    pub base_lr: f64,
    /// The rule.
    pub schedule: Schedule,
    /// Linear warm-up from `base_lr / 10`... to `base_lr` over this many epochs (0: none).
    pub warmup_epochs: f64,
    /// Product of the plateau decays so far.
    pub plateau_scale: f64,
    /// Best validation error so far (plateau).
    pub best: Option<f64>,
    /// Epochs since the last improvement (plateau).
    pub bad_epochs: usize,
}

impl LrSchedule {
    /// A schedule at its start.
    pub fn new(base_lr: f64, schedule: Schedule, warmup_epochs: f64) -> Self {
        LrSchedule {
            base_lr,
            schedule,
            warmup_epochs,
            plateau_scale: 1.0,
            best: None,
            bad_epochs: 0,
        }
    }

    /// The learning rate at fractional epoch `t` (= steps done / steps per epoch).
    pub fn lr(&self, t: f64) -> f64 {
        let mut lr = self.base_lr * self.plateau_scale;
        if let Schedule::Step { milestones, factor } = &self.schedule {
            for &m in milestones {
                if t >= m {
                    lr *= factor;
                }
            }
        }
        if self.warmup_epochs > 0.0 && t < self.warmup_epochs {
            // From base/10 up to base, linearly (Goyal et al. start at lr/k; this is simpler).
            let w = t / self.warmup_epochs;
            lr *= 0.1 + 0.9 * w;
        }
        lr
    }

    /// Feeds the validation top-1 error at the end of an epoch; true if the rate fell.
    pub fn epoch_end(&mut self, val_error: f64) -> bool {
        let Schedule::Plateau {
            patience,
            threshold,
            factor,
        } = self.schedule
        else {
            return false;
        };
        match self.best {
            Some(best) if val_error > best - threshold => {
                self.bad_epochs += 1;
                if self.bad_epochs >= patience {
                    self.plateau_scale *= factor;
                    self.bad_epochs = 0;
                    self.best = Some(best.min(val_error));
                    return true;
                }
                false
            }
            _ => {
                self.best = Some(val_error);
                self.bad_epochs = 0;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_divides_by_ten_after_patience_epochs_without_improvement() {
        let mut s = LrSchedule::new(
            0.1,
            Schedule::Plateau {
                patience: 2,
                threshold: 0.01,
                factor: 0.1,
            },
            0.0,
        );
        assert!(!s.epoch_end(0.9));
        assert!(!s.epoch_end(0.8)); // improved
        assert!(!s.epoch_end(0.795)); // less than the threshold: 1 bad epoch
        assert_eq!(s.lr(3.0), 0.1);
        assert!(s.epoch_end(0.80)); // 2 bad epochs: falls
        assert!((s.lr(4.0) - 0.01).abs() < 1e-12);
        assert!(!s.epoch_end(0.7)); // improved again
        assert!(!s.epoch_end(0.7));
        assert!(s.epoch_end(0.71));
        assert!((s.lr(7.0) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn step_schedule_and_warmup() {
        let s = LrSchedule::new(
            0.1,
            Schedule::Step {
                milestones: vec![5.0, 7.5],
                factor: 0.1,
            },
            1.0,
        );
        assert!((s.lr(0.0) - 0.01).abs() < 1e-12);
        assert!((s.lr(0.5) - 0.055).abs() < 1e-12);
        assert_eq!(s.lr(1.0), 0.1);
        assert_eq!(s.lr(4.99), 0.1);
        assert!((s.lr(5.0) - 0.01).abs() < 1e-12);
        assert!((s.lr(7.49) - 0.01).abs() < 1e-12);
        assert!((s.lr(7.5) - 0.001).abs() < 1e-12);
        let mut s2 = s.clone();
        assert!(!s2.epoch_end(0.5), "a step schedule ignores the error");
    }
}
