//! AlexNet's "PCA lighting" colour augmentation (Krizhevsky et al. 2012,
//! §4.1), which the ResNet paper uses as "the standard color augmentation":
//! each image gets `sum_i p_i * alpha_i * lambda_i` added to every pixel,
//! with `(p_i, lambda_i)` the eigenvectors and eigenvalues of the RGB
//! covariance and `alpha_i ~ N(0, 0.1)` drawn per image.

/// Eigen-decomposition of the RGB covariance, on the 0..255 scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lighting {
    /// Eigenvalues.
    pub eigval: [f32; 3],
    /// Eigenvectors as columns: `eigvec[channel][i]`.
    pub eigvec: [[f32; 3]; 3],
}

impl Lighting {
    /// The well-known ImageNet values (as used by fb.resnet.torch and many
    /// reimplementations; computed on the 0..1 scale, converted here).
    pub fn imagenet() -> Self {
        let eigval = [0.2175f32, 0.0188, 0.0045];
        let v = [
            [-0.5675f32, 0.7192, 0.4009],
            [-0.5808, -0.0045, -0.8140],
            [-0.5836, -0.6948, 0.4203],
        ];
        Lighting {
            eigval: eigval.map(|e| e * 255.0),
            eigvec: v,
        }
    }

    /// From a pack's RGB covariance (0..255 scale, `DatasetStats::rgb_covariance`):
    /// its eigen-decomposition, eigenvalues expressed as AlexNet's formula
    /// expects (computed on the 0..1 scale, the offset then scaled to 0..255).
    /// Cyclic Jacobi rotations: for a symmetric 3x3 this converges in a few
    /// sweeps, and a linear-algebra crate would be a large dependency for it.
    #[allow(clippy::needless_range_loop)] // matrix code reads best with indices
    pub fn from_covariance(cov: [[f64; 3]; 3]) -> Self {
        let mut a = cov;
        let mut v = [[1.0f64, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        for _ in 0..32 {
            let off = a[0][1].powi(2) + a[0][2].powi(2) + a[1][2].powi(2);
            if off < 1e-18 * (a[0][0].powi(2) + a[1][1].powi(2) + a[2][2].powi(2)).max(1e-300) {
                break;
            }
            for (p, q) in [(0, 1), (0, 2), (1, 2)] {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                // A <- J^T A J, V <- V J, with J the rotation in the (p, q) plane.
                for k in 0..3 {
                    let (akp, akq) = (a[k][p], a[k][q]);
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for k in 0..3 {
                    let (apk, aqk) = (a[p][k], a[q][k]);
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for row in &mut v {
                    let (vp, vq) = (row[p], row[q]);
                    row[p] = c * vp - s * vq;
                    row[q] = s * vp + c * vq;
                }
            }
        }
        let mut order = [0usize, 1, 2];
        order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
        let mut eigval = [0f32; 3];
        let mut eigvec = [[0f32; 3]; 3];
        for (col, &i) in order.iter().enumerate() {
            eigval[col] = (a[i][i].max(0.0) / 255.0) as f32;
            for c in 0..3 {
                eigvec[c][col] = v[c][i] as f32;
            }
        }
        Lighting { eigval, eigvec }
    }

    /// The RGB offset (0..255 scale) for coefficients `alpha`.
    pub fn offset(&self, alpha: [f32; 3]) -> [f32; 3] {
        let mut out = [0f32; 3];
        for (c, o) in out.iter_mut().enumerate() {
            *o = (0..3)
                .map(|i| self.eigvec[c][i] * alpha[i] * self.eigval[i])
                .sum();
        }
        out
    }
}

impl Default for Lighting {
    fn default() -> Self {
        Self::imagenet()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn jacobi_recovers_the_decomposition() {
        let cov = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.25], [0.5, 0.25, 2.0]];
        let l = Lighting::from_covariance(cov);
        assert!(l.eigval[0] >= l.eigval[1] && l.eigval[1] >= l.eigval[2]);
        for i in 0..3 {
            // cov * v_i = lambda_i * v_i, with lambda back on the covariance's scale.
            let lambda = l.eigval[i] as f64 * 255.0;
            for r in 0..3 {
                let cv: f64 = (0..3).map(|c| cov[r][c] * l.eigvec[c][i] as f64).sum();
                assert!(
                    (cv - lambda * l.eigvec[r][i] as f64).abs() < 1e-4,
                    "{cv} vs {lambda}"
                );
            }
            let norm: f32 = (0..3).map(|c| l.eigvec[c][i].powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        let trace: f32 = l.eigval.iter().sum::<f32>() * 255.0;
        assert!((trace - 9.0).abs() < 1e-3);
    }
}
