//! Loss and top-k error from logits.

/// Running totals over an evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accuracy {
    /// Records seen.
    pub n: usize,
    /// Sum of cross-entropy losses.
    pub loss_sum: f64,
    /// Records whose label is the top prediction.
    pub top1: usize,
    /// Records whose label is among the 5 top predictions.
    pub top5: usize,
}

impl Accuracy {
    /// Adds records whose class scores are `scores` (`len * classes`, row per
    /// record, log-probabilities or logits) with `labels`.
    pub fn add(&mut self, scores: &[f32], classes: usize, labels: &[u32]) {
        for (row, &label) in scores.chunks_exact(classes).zip(labels) {
            let l = label as usize;
            let target = row[l];
            // Rank = classes scoring strictly higher (ties count for the label).
            let higher = row.iter().filter(|&&v| v > target).count();
            self.top1 += usize::from(higher < 1);
            self.top5 += usize::from(higher < 5);
            let lse = log_sum_exp(row);
            self.loss_sum += (lse - target) as f64;
            self.n += 1;
        }
    }

    /// Adds the totals of another accumulation.
    pub fn merge(&mut self, other: &Accuracy) {
        self.n += other.n;
        self.loss_sum += other.loss_sum;
        self.top1 += other.top1;
        self.top5 += other.top5;
    }

    /// Mean loss.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.n.max(1) as f64
    }

    /// Top-1 error, 0..1.
    pub fn top1_error(&self) -> f64 {
        1.0 - self.top1 as f64 / self.n.max(1) as f64
    }

    /// Top-5 error, 0..1.
    pub fn top5_error(&self) -> f64 {
        1.0 - self.top5 as f64 / self.n.max(1) as f64
    }
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln()
}

/// Averages the softmax probabilities of `views` consecutive rows per record
/// (ten-crop, multi-scale) and returns log-probabilities, one row per record.
pub fn average_views(logits: &[f32], classes: usize, views: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(logits.len() / views);
    for rec in logits.chunks_exact(classes * views) {
        let mut p = vec![0f32; classes];
        for row in rec.chunks_exact(classes) {
            let lse = log_sum_exp(row);
            for (acc, v) in p.iter_mut().zip(row) {
                *acc += (v - lse).exp() / views as f32;
            }
        }
        out.extend(p.iter().map(|v| v.ln()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_on_known_scores() {
        let mut a = Accuracy::default();
        // 6 classes; label ranks: 1st, 2nd, 6th.
        let scores = [
            5.0, 1.0, 0.0, 0.0, 0.0, 0.0, //
            5.0, 4.0, 0.0, 1.0, 2.0, 3.0, //
            5.0, 4.0, 3.0, 2.0, 1.0, -1.0,
        ];
        a.add(&scores, 6, &[0, 1, 5]);
        assert_eq!((a.n, a.top1, a.top5), (3, 1, 2));
        assert!((a.top1_error() - 2.0 / 3.0).abs() < 1e-12);
        assert!((a.top5_error() - 1.0 / 3.0).abs() < 1e-12);
        // Uniform logits: loss ln(classes).
        let mut u = Accuracy::default();
        u.add(&[0.0; 4], 4, &[2]);
        assert!((u.loss() - 4f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn view_averaging_is_a_mean_of_probabilities() {
        let logits = [0.0, 0.0, 10.0, -10.0]; // one record, two views, 2 classes
        let avg = average_views(&logits, 2, 2);
        let p: Vec<f32> = avg.iter().map(|v| v.exp()).collect();
        assert!(
            (p[0] - 0.75).abs() < 1e-4 && (p[1] - 0.25).abs() < 1e-4,
            "{p:?}"
        );
    }
}
