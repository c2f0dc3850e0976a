//! Noise, through OpenDP only.
//!
//! hexflow never samples noise or computes a privacy cost itself: a release
//! builds an OpenDP measurement, asks it for its cost with `map`, and draws
//! with `invoke`. Gaussian noise under zero-concentrated DP is the default
//! (discrete Gaussian on integer vectors, OpenDP's exact sampler on float
//! vectors); Laplace under pure ε is the option, charged to the same ledger
//! as its zCDP equivalent ρ = ε²/2.

use opendp::combinators::ConcentratedMeasure;
use opendp::core::Measurement;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::error::Fallible;
use opendp::measurements::{make_gaussian, make_laplace};
use opendp::measures::{MaxDivergence, ZeroConcentratedDivergence};
use opendp::metrics::{L1Distance, L2Distance};
use serde::{Deserialize, Serialize};

use super::sensitivity::Sensitivity;

/// Errors of the noise stage.
#[derive(Debug, thiserror::Error)]
pub enum MechanismError {
    #[error("OpenDP refused: {0}")]
    OpenDp(String),
    #[error("no noise scale reaches the budget {budget} (sensitivity {sensitivity})")]
    Unreachable { budget: f64, sensitivity: f64 },
}

fn odp(e: opendp::error::Error) -> MechanismError {
    MechanismError::OpenDp(format!("{:?}: {}", e.variant, e.message.unwrap_or_default()))
}

/// The noise distribution and its privacy measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// Gaussian, ρ-zCDP, L2 sensitivity.
    GaussianZcdp,
    /// Laplace, pure ε-DP, L1 sensitivity.
    LaplacePure,
}

/// A budget as the user gives it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Budget {
    Rho(f64),
    Epsilon(f64),
}

/// The smallest and largest ρ a release may ask for. Below 1e-9 the noise
/// (σ ≈ 22,000 × the sensitivity) makes every value meaningless, and near
/// 1e-320 OpenDP's sampler overflows *after* the charge; above 100 a
/// release is as good as unprotected. Checked before anything is charged.
pub const RHO_RANGE: (f64, f64) = (1e-9, 100.0);
/// The same for ε (pure DP, Laplace).
pub const EPSILON_RANGE: (f64, f64) = (1e-6, 100.0);

impl Budget {
    /// Refuses budgets outside [`RHO_RANGE`] / [`EPSILON_RANGE`].
    pub fn check(&self) -> Result<(), crate::release::SpecError> {
        let (kind, got, (min, max)) = match *self {
            Budget::Rho(r) => ("rho", r, RHO_RANGE),
            Budget::Epsilon(e) => ("epsilon", e, EPSILON_RANGE),
        };
        if got.is_finite() && (min..=max).contains(&got) {
            Ok(())
        } else {
            Err(crate::release::SpecError::BadBudget { kind, got, min, max })
        }
    }
}

type IntGaussian = Measurement<VectorDomain<AtomDomain<i64>>, L2Distance<f64>, ZeroConcentratedDivergence, Vec<i64>>;
type FloatGaussian = Measurement<VectorDomain<AtomDomain<f64>>, L2Distance<f64>, ZeroConcentratedDivergence, Vec<f64>>;
type IntLaplace = Measurement<VectorDomain<AtomDomain<i64>>, L1Distance<f64>, MaxDivergence, Vec<i64>>;
type FloatLaplace = Measurement<VectorDomain<AtomDomain<f64>>, L1Distance<f64>, MaxDivergence, Vec<f64>>;

fn int_gaussian(scale: f64) -> Fallible<IntGaussian> {
    make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L2Distance::<f64>::default(),
        scale,
        None,
    )
}

fn float_gaussian(scale: f64) -> Fallible<FloatGaussian> {
    make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        L2Distance::<f64>::default(),
        scale,
        None,
    )
}

fn int_laplace(scale: f64) -> Fallible<IntLaplace> {
    make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<i64>::default()),
        L1Distance::<f64>::default(),
        scale,
        None,
    )
}

fn float_laplace(scale: f64) -> Fallible<FloatLaplace> {
    make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        L1Distance::<f64>::default(),
        scale,
        None,
    )
}

/// A calibrated noise mechanism: distribution, scale and what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibrated {
    pub mechanism: Mechanism,
    /// σ of the Gaussian or b of the Laplace, in counts.
    pub scale: f64,
    /// The sensitivity the cost was computed for (L2 or L1).
    pub sensitivity: f64,
    /// ρ charged (zCDP; for Laplace, ε²/2).
    pub rho: f64,
    /// ε of pure DP (Laplace only).
    pub epsilon_pure: Option<f64>,
}

impl Calibrated {
    /// Standard deviation of one noise draw.
    pub fn noise_sd(&self) -> f64 {
        super::errorbar::float_draw(self.mechanism, self.scale).sd
    }

    /// Half-width of the 95 % interval of one noise draw.
    pub fn ci95(&self) -> f64 {
        super::errorbar::float_draw(self.mechanism, self.scale).half_width
    }

    /// ε at `delta` for a zCDP release (OpenDP's conversion); the pure ε for
    /// a Laplace release.
    pub fn epsilon_at(&self, delta: f64) -> Result<f64, MechanismError> {
        match self.mechanism {
            Mechanism::LaplacePure => Ok(self.epsilon_pure.unwrap_or(f64::INFINITY)),
            Mechanism::GaussianZcdp => zcdp_epsilon(self.rho, delta),
        }
    }
}

/// ε at `delta` of a zCDP guarantee of `rho` (OpenDP's conversion): what
/// several releases of one day cost together, their ρ added.
pub fn zcdp_epsilon(rho: f64, delta: f64) -> Result<f64, MechanismError> {
    <ZeroConcentratedDivergence as ConcentratedMeasure>::convert(rho)
        .map_err(odp)?
        .epsilon(delta)
        .map_err(odp)
}

/// The cost OpenDP's privacy map gives for `scale` and the sensitivity.
pub fn cost(mechanism: Mechanism, scale: f64, s: &Sensitivity) -> Result<Calibrated, MechanismError> {
    Ok(match mechanism {
        Mechanism::GaussianZcdp => Calibrated {
            mechanism,
            scale,
            sensitivity: s.l2,
            rho: int_gaussian(scale).map_err(odp)?.map(&s.l2).map_err(odp)?,
            epsilon_pure: None,
        },
        Mechanism::LaplacePure => {
            let eps = int_laplace(scale).map_err(odp)?.map(&s.l1).map_err(odp)?;
            Calibrated {
                mechanism,
                scale,
                sensitivity: s.l1,
                rho: eps * eps / 2.0,
                epsilon_pure: Some(eps),
            }
        }
    })
}

/// The smallest noise scale whose OpenDP cost fits the budget.
pub fn calibrate(budget: Budget, s: &Sensitivity) -> Result<Calibrated, MechanismError> {
    let (mechanism, target, d) = match budget {
        Budget::Rho(r) => (Mechanism::GaussianZcdp, r, s.l2),
        Budget::Epsilon(e) => (Mechanism::LaplacePure, e, s.l1),
    };
    let fits = |scale: &f64| -> Fallible<bool> {
        Ok(match mechanism {
            Mechanism::GaussianZcdp => int_gaussian(*scale)?.map(&d)? <= target,
            Mechanism::LaplacePure => int_laplace(*scale)?.map(&d)? <= target,
        })
    };
    if !(target.is_finite() && target > 0.0) {
        return Err(MechanismError::Unreachable {
            budget: target,
            sensitivity: d,
        });
    }
    // The textbook scale brackets the search; OpenDP's map decides.
    let textbook = match mechanism {
        Mechanism::GaussianZcdp => d / (2.0 * target).sqrt(),
        Mechanism::LaplacePure => d / target,
    };
    let scale =
        opendp::utilities::fallible_binary_search(fits, (textbook * 0.5, textbook * 2.0 + 1e-9)).map_err(|_| {
            MechanismError::Unreachable {
                budget: target,
                sensitivity: d,
            }
        })?;
    cost(mechanism, scale, s)
}

/// Adds calibrated noise to integer counts (exact discrete noise).
pub fn noisy_counts(c: &Calibrated, counts: &[i64]) -> Result<Vec<i64>, MechanismError> {
    let data = counts.to_vec();
    match c.mechanism {
        Mechanism::GaussianZcdp => int_gaussian(c.scale).map_err(odp)?.invoke(&data).map_err(odp),
        Mechanism::LaplacePure => int_laplace(c.scale).map_err(odp)?.invoke(&data).map_err(odp),
    }
}

/// Adds calibrated noise to real-valued sums.
pub fn noisy_sums(c: &Calibrated, sums: &[f64]) -> Result<Vec<f64>, MechanismError> {
    let data = sums.to_vec();
    match c.mechanism {
        Mechanism::GaussianZcdp => float_gaussian(c.scale).map_err(odp)?.invoke(&data).map_err(odp),
        Mechanism::LaplacePure => float_laplace(c.scale).map_err(odp)?.invoke(&data).map_err(odp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_var(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        (m, v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0))
    }

    #[test]
    fn calibration_spends_the_budget_and_not_more() {
        let s = Sensitivity { l1: 24.0, l2: 4.9 };
        for rho in [0.01, 0.1, 1.0] {
            let c = calibrate(Budget::Rho(rho), &s).expect("calibrate");
            assert!(c.rho <= rho && c.rho > rho * 0.999, "{rho}: {c:?}");
            assert!((c.scale - s.l2 / (2.0 * rho).sqrt()).abs() / c.scale < 1e-3);
        }
        let c = calibrate(Budget::Epsilon(0.5), &s).expect("calibrate");
        assert!(c.epsilon_pure.expect("eps") <= 0.5 && (c.rho - 0.125).abs() < 1e-3);
        assert!(calibrate(Budget::Rho(0.0), &s).is_err());
    }

    #[test]
    fn epsilon_at_delta_exceeds_the_zcdp_floor() {
        // ε(δ) = ρ + 2√(ρ ln(1/δ)) is the classical upper bound; OpenDP's
        // conversion is tighter but must stay above ρ.
        let c = calibrate(Budget::Rho(0.1), &Sensitivity { l1: 1.0, l2: 1.0 }).expect("calibrate");
        let eps = c.epsilon_at(1e-7).expect("eps");
        let classic = 0.1 + 2.0 * (0.1f64 * (1e7f64).ln()).sqrt();
        assert!(eps > 0.1 && eps <= classic + 1e-9, "{eps} vs {classic}");
    }

    // Statistical checks with a fixed sample: each bound is 6 standard
    // errors wide, so a correct sampler fails with probability < 1e-8.
    const N: usize = 20_000;

    #[test]
    fn gaussian_noise_has_the_published_spread() {
        let c = cost(Mechanism::GaussianZcdp, 10.0, &Sensitivity { l1: 1.0, l2: 1.0 }).expect("cost");
        let out = noisy_counts(&c, &vec![1_000; N]).expect("noise");
        let noise: Vec<f64> = out.iter().map(|x| (*x - 1_000) as f64).collect();
        let (m, v) = mean_var(&noise);
        let sd2 = c.noise_sd().powi(2);
        assert!(m.abs() < 6.0 * c.noise_sd() / (N as f64).sqrt(), "mean {m}");
        // Var(s²)/σ⁴ = 2/(n−1) for a Gaussian.
        assert!(
            (v / sd2 - 1.0).abs() < 6.0 * (2.0 / (N as f64 - 1.0)).sqrt(),
            "var {v} vs {sd2}"
        );
        // The 95 % half-width covers 95 % of draws: binomial sd √(.05·.95/n).
        let inside = noise.iter().filter(|x| x.abs() <= c.ci95()).count() as f64 / N as f64;
        assert!(
            (inside - 0.95).abs() < 6.0 * (0.05f64 * 0.95 / N as f64).sqrt(),
            "coverage {inside}"
        );
    }

    #[test]
    fn laplace_noise_has_the_published_spread() {
        let c = cost(Mechanism::LaplacePure, 10.0, &Sensitivity { l1: 1.0, l2: 1.0 }).expect("cost");
        let out = noisy_counts(&c, &vec![0; N]).expect("noise");
        let noise: Vec<f64> = out.iter().map(|x| *x as f64).collect();
        let (m, v) = mean_var(&noise);
        let sd2 = c.noise_sd().powi(2);
        assert!(m.abs() < 6.0 * c.noise_sd() / (N as f64).sqrt(), "mean {m}");
        // Laplace kurtosis 6: Var(s²)/σ⁴ ≈ 5/n.
        assert!(
            (v / sd2 - 1.0).abs() < 6.0 * (5.0 / N as f64).sqrt(),
            "var {v} vs {sd2}"
        );
    }

    #[test]
    fn float_gaussian_noise_has_the_published_spread() {
        let c = cost(Mechanism::GaussianZcdp, 3.0, &Sensitivity { l1: 1.0, l2: 1.0 }).expect("cost");
        let out = noisy_sums(&c, &vec![0.25; 5_000]).expect("noise");
        let noise: Vec<f64> = out.iter().map(|x| x - 0.25).collect();
        let (m, v) = mean_var(&noise);
        assert!(m.abs() < 6.0 * 3.0 / (5_000f64).sqrt(), "mean {m}");
        assert!((v / 9.0 - 1.0).abs() < 6.0 * (2.0 / 4_999.0f64).sqrt(), "var {v}");
    }
}
