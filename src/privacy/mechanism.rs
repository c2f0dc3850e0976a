//! Noise, through OpenDP only.
//!
//! hexflow never samples noise or computes a privacy cost itself: a release
//! builds an OpenDP measurement, asks it for its cost with `map`, and draws
//! with `invoke` from that same measurement ([`Calibrated::measurement`]
//! builds both). Gaussian noise under zero-concentrated DP is the default
//! (discrete Gaussian on integer vectors; on real-valued vectors, OpenDP's
//! sampler on a grid of step 2^k, see [`Draw`]); Laplace under pure ε is the
//! option, charged to the same ledger as its zCDP equivalent ρ = ε²/2.

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
    /// A bug, caught before any draw: noise asked of other values than
    /// those its cost was computed for.
    #[error("noise drawn on other values than priced: {0}")]
    WrongDraw(String),
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

/// How a release's values take their noise: this decides the one OpenDP
/// measurement that both prices and draws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "values")]
pub enum Draw {
    /// Integer counts: exact discrete noise, nothing rounded.
    Integer,
    /// `n` real-valued sums. OpenDP rounds each to a multiple of 2^k and adds
    /// integer noise on that grid; its privacy map adds the rounding's worst
    /// case (2^k·√n under L2, 2^k·n under L1) to the sensitivity, so the
    /// measurement must know `n`. OpenDP's default k (−1074, no rounding)
    /// makes every draw exact arithmetic on 1,100-bit numbers; see
    /// [`Draw::float`] for the k chosen.
    Float { k: i32, n: usize },
}

/// How far below the noise scale the float grid lies: k = ⌊log2 σ⌋ − 30.
/// The rounding then moves a value by at most σ·2⁻³⁰ and adds at most
/// σ·2⁻³⁰·√n to the sensitivity (σ/1,000,000 at a million values: ρ grows
/// by about 10⁻⁵ of itself, and calibration pays it with a wider σ), and
/// the sampler works on machine-size integers instead of 1,100-bit ones:
/// `hexflow bench` prints the CPU time per value of each.
pub const FLOAT_GRID_BITS_BELOW_SCALE: i32 = 30;

impl Draw {
    /// The float draw of `n` values for noise of about `scale` (a public
    /// number: the textbook scale of the budget and sensitivity), its k fixed
    /// before calibration so that the cost is monotone in the scale searched.
    pub fn float(scale: f64, n: usize) -> Draw {
        let k = if scale.is_finite() && scale > 0.0 {
            (scale.log2().floor() as i32 - FLOAT_GRID_BITS_BELOW_SCALE).max(-1074)
        } else {
            -1074
        };
        Draw::Float { k, n }
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

fn float_gaussian(scale: f64, k: i32, n: usize) -> Fallible<FloatGaussian> {
    make_gaussian::<_, _, ZeroConcentratedDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()).with_size(n),
        L2Distance::<f64>::default(),
        scale,
        Some(k),
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

fn float_laplace(scale: f64, k: i32, n: usize) -> Fallible<FloatLaplace> {
    make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()).with_size(n),
        L1Distance::<f64>::default(),
        scale,
        Some(k),
    )
}

/// One of the four measurements, as [`Calibrated::measurement`] builds it.
enum Measured {
    IntGaussian(IntGaussian),
    FloatGaussian(FloatGaussian),
    IntLaplace(IntLaplace),
    FloatLaplace(FloatLaplace),
}

impl Measured {
    fn new(mechanism: Mechanism, draw: Draw, scale: f64) -> Fallible<Measured> {
        Ok(match (mechanism, draw) {
            (Mechanism::GaussianZcdp, Draw::Integer) => Measured::IntGaussian(int_gaussian(scale)?),
            (Mechanism::GaussianZcdp, Draw::Float { k, n }) => Measured::FloatGaussian(float_gaussian(scale, k, n)?),
            (Mechanism::LaplacePure, Draw::Integer) => Measured::IntLaplace(int_laplace(scale)?),
            (Mechanism::LaplacePure, Draw::Float { k, n }) => Measured::FloatLaplace(float_laplace(scale, k, n)?),
        })
    }

    /// OpenDP's privacy map at sensitivity `d`: ρ (Gaussian) or ε (Laplace).
    fn map(&self, d: f64) -> Fallible<f64> {
        match self {
            Measured::IntGaussian(m) => m.map(&d),
            Measured::FloatGaussian(m) => m.map(&d),
            Measured::IntLaplace(m) => m.map(&d),
            Measured::FloatLaplace(m) => m.map(&d),
        }
    }
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
    /// The values the cost was computed for and the noise is drawn on.
    pub draw: Draw,
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

/// The cost OpenDP's privacy map gives for `scale`, the sensitivity and
/// the values drawn, from the measurement that [`noisy_counts`] or
/// [`noisy_sums`] will draw from.
pub fn cost(mechanism: Mechanism, scale: f64, s: &Sensitivity, draw: Draw) -> Result<Calibrated, MechanismError> {
    let m = Measured::new(mechanism, draw, scale).map_err(odp)?;
    Ok(match mechanism {
        Mechanism::GaussianZcdp => Calibrated {
            mechanism,
            scale,
            sensitivity: s.l2,
            rho: m.map(s.l2).map_err(odp)?,
            epsilon_pure: None,
            draw,
        },
        Mechanism::LaplacePure => {
            let eps = m.map(s.l1).map_err(odp)?;
            Calibrated {
                mechanism,
                scale,
                sensitivity: s.l1,
                rho: eps * eps / 2.0,
                epsilon_pure: Some(eps),
                draw,
            }
        }
    })
}

/// The smallest noise scale whose OpenDP cost fits the budget. `n_float`:
/// `None` for integer counts, `Some(n)` for `n` real-valued sums (their
/// grid k is chosen here, from the textbook scale).
pub fn calibrate(budget: Budget, s: &Sensitivity, n_float: Option<usize>) -> Result<Calibrated, MechanismError> {
    let (mechanism, target, d) = match budget {
        Budget::Rho(r) => (Mechanism::GaussianZcdp, r, s.l2),
        Budget::Epsilon(e) => (Mechanism::LaplacePure, e, s.l1),
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
    let draw = n_float.map_or(Draw::Integer, |n| Draw::float(textbook, n));
    let fits = |scale: &f64| -> Fallible<bool> { Ok(Measured::new(mechanism, draw, *scale)?.map(d)? <= target) };
    let scale =
        opendp::utilities::fallible_binary_search(fits, (textbook * 0.5, textbook * 2.0 + 1e-9)).map_err(|_| {
            MechanismError::Unreachable {
                budget: target,
                sensitivity: d,
            }
        })?;
    cost(mechanism, scale, s, draw)
}

/// Adds calibrated noise to integer counts (exact discrete noise).
pub fn noisy_counts(c: &Calibrated, counts: &[i64]) -> Result<Vec<i64>, MechanismError> {
    if c.draw != Draw::Integer {
        return Err(MechanismError::WrongDraw(format!(
            "{:?} priced, integer counts drawn",
            c.draw
        )));
    }
    let data = counts.to_vec();
    match Measured::new(c.mechanism, c.draw, c.scale).map_err(odp)? {
        Measured::IntGaussian(m) => m.invoke(&data).map_err(odp),
        Measured::IntLaplace(m) => m.invoke(&data).map_err(odp),
        _ => unreachable!("an integer draw builds an integer measurement"),
    }
}

/// Adds calibrated noise to real-valued sums: all `n` of them in one draw
/// from the sized measurement whose map gave the cost (the rounding term
/// depends on `n`, so the draw cannot be split into smaller measurements).
pub fn noisy_sums(c: &Calibrated, sums: &[f64]) -> Result<Vec<f64>, MechanismError> {
    match c.draw {
        Draw::Float { n, .. } if n == sums.len() => {}
        other => {
            return Err(MechanismError::WrongDraw(format!(
                "{other:?} priced, {} real values drawn",
                sums.len()
            )));
        }
    }
    let data = sums.to_vec();
    match Measured::new(c.mechanism, c.draw, c.scale).map_err(odp)? {
        Measured::FloatGaussian(m) => m.invoke(&data).map_err(odp),
        Measured::FloatLaplace(m) => m.invoke(&data).map_err(odp),
        _ => unreachable!("a float draw builds a float measurement"),
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
            let c = calibrate(Budget::Rho(rho), &s, None).expect("calibrate");
            assert!(c.rho <= rho && c.rho > rho * 0.999, "{rho}: {c:?}");
            assert!((c.scale - s.l2 / (2.0 * rho).sqrt()).abs() / c.scale < 1e-3);
        }
        let c = calibrate(Budget::Epsilon(0.5), &s, None).expect("calibrate");
        assert!(c.epsilon_pure.expect("eps") <= 0.5 && (c.rho - 0.125).abs() < 1e-3);
        assert!(calibrate(Budget::Rho(0.0), &s, None).is_err());
    }

    #[test]
    fn epsilon_at_delta_exceeds_the_zcdp_floor() {
        // ε(δ) = ρ + 2√(ρ ln(1/δ)) is the classical upper bound; OpenDP's
        // conversion is tighter but must stay above ρ.
        let c = calibrate(Budget::Rho(0.1), &Sensitivity { l1: 1.0, l2: 1.0 }, None).expect("calibrate");
        let eps = c.epsilon_at(1e-7).expect("eps");
        let classic = 0.1 + 2.0 * (0.1f64 * (1e7f64).ln()).sqrt();
        assert!(eps > 0.1 && eps <= classic + 1e-9, "{eps} vs {classic}");
    }

    // Statistical checks with a fixed sample: each bound is 6 standard
    // errors wide, so a correct sampler fails with probability < 1e-8.
    const N: usize = 20_000;

    #[test]
    fn gaussian_noise_has_the_published_spread() {
        let c = cost(
            Mechanism::GaussianZcdp,
            10.0,
            &Sensitivity { l1: 1.0, l2: 1.0 },
            Draw::Integer,
        )
        .expect("cost");
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
        let c = cost(
            Mechanism::LaplacePure,
            10.0,
            &Sensitivity { l1: 1.0, l2: 1.0 },
            Draw::Integer,
        )
        .expect("cost");
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
        let c = cost(
            Mechanism::GaussianZcdp,
            3.0,
            &Sensitivity { l1: 1.0, l2: 1.0 },
            Draw::float(3.0, 5_000),
        )
        .expect("cost");
        let out = noisy_sums(&c, &vec![0.25; 5_000]).expect("noise");
        let noise: Vec<f64> = out.iter().map(|x| x - 0.25).collect();
        let (m, v) = mean_var(&noise);
        assert!(m.abs() < 6.0 * 3.0 / (5_000f64).sqrt(), "mean {m}");
        assert!((v / 9.0 - 1.0).abs() < 6.0 * (2.0 / 4_999.0f64).sqrt(), "var {v}");
    }

    #[test]
    fn float_draws_are_priced_with_their_rounding_and_drawn_on_their_grid() {
        let s = Sensitivity { l1: 1.0, l2: 1.0 };
        let exact = cost(Mechanism::GaussianZcdp, 5.0, &s, Draw::Integer).expect("int").rho;
        // The chosen grid costs more than no rounding, by a hair: here
        // 2^(2−30)·√10⁶ ≈ 3.7e-6 more sensitivity, ρ × (1 + 7.5e-6).
        let n = 1_000_000;
        let fine = cost(Mechanism::GaussianZcdp, 5.0, &s, Draw::float(5.0, n)).expect("float");
        let grown = fine.rho / exact - 1.0;
        assert!((grown - 7.45e-6).abs() < 0.05e-6, "ρ grew by {grown}");
        // A coarse grid's rounding is charged: 2^0·√100 = 10 more sensitivity.
        let coarse = cost(Mechanism::GaussianZcdp, 5.0, &s, Draw::Float { k: 0, n: 100 }).expect("coarse");
        assert!((coarse.rho / exact - 121.0).abs() < 1e-6, "{}", coarse.rho / exact);
        let lap = cost(Mechanism::LaplacePure, 5.0, &s, Draw::Float { k: 0, n: 100 }).expect("laplace");
        assert!((lap.epsilon_pure.expect("eps") - 101.0 / 5.0).abs() < 1e-9);
        // Calibration spends the budget, rounding included.
        let c = calibrate(Budget::Rho(0.01), &s, Some(n)).expect("calibrate");
        assert!(c.rho <= 0.01 && c.rho > 0.01 * 0.999, "{c:?}");
        // Every draw is a multiple of 2^k: the grid is the one priced.
        let Draw::Float { k, .. } = c.draw else { panic!("{c:?}") };
        let step = 2f64.powi(k);
        let c = cost(Mechanism::GaussianZcdp, c.scale, &s, Draw::Float { k, n: 1_000 }).expect("cost");
        let out = noisy_sums(&c, &vec![0.1; 1_000]).expect("noise");
        assert!(out.iter().all(|x| (x / step).fract() == 0.0));
    }

    #[test]
    fn noise_is_drawn_only_on_the_values_it_was_priced_for() {
        let s = Sensitivity { l1: 1.0, l2: 1.0 };
        let float = cost(Mechanism::GaussianZcdp, 2.0, &s, Draw::float(2.0, 10)).expect("cost");
        assert!(matches!(
            noisy_sums(&float, &[0.0; 11]),
            Err(MechanismError::WrongDraw(_))
        ));
        assert!(matches!(
            noisy_counts(&float, &[0; 10]),
            Err(MechanismError::WrongDraw(_))
        ));
        let int = cost(Mechanism::GaussianZcdp, 2.0, &s, Draw::Integer).expect("cost");
        assert!(matches!(
            noisy_sums(&int, &[0.0; 10]),
            Err(MechanismError::WrongDraw(_))
        ));
        assert_eq!(noisy_sums(&float, &[0.0; 10]).expect("noise").len(), 10);
    }
}
