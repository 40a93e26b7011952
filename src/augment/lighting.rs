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
