//! Sensitivity of a release's pre-noise vector, from the operator-attested
//! bounds, the output bin, the metric and the weight matrix.
//!
//! Neighbouring datasets differ by one device-day. In one local day a device
//! is counted in at most `C = max_cells_per_bin` cells per bin and in at most
//! `B = max_bins_per_day` bins, and makes at most `T = max_trips_per_day`
//! trips. Output bins (1 h, 1 d, 1 w, 1 mo) are unions of whole operator
//! bins and, for 1 d and longer, of whole local days, so one device-day
//! lands in at most `a = min(B, bins per output bin)` operator bins of any
//! one output bin.
//!
//! **Footfall, cell placement** (vector of cell counts per output bin): each
//! coordinate moves by at most `a`, the total by at most `C·B`, so
//! `L1 = C·B` and, since `Σx² ≤ a·Σx`, `L2 = √(C·B·a)`.
//!
//! **Footfall, hex placement** (`y_j = Σ_c x_cj W_c` per output bin `j`):
//! rows of W sum to 1, so `L1 ≤ Σ x_cj ‖W_c‖₁ = C·B`; with `w = max_c ‖W_c‖₂`
//! and `a_j` the device's operator bins in output bin `j`,
//! `‖y_j‖₂ ≤ C·a_j·w` and `Σ_j (C a_j w)² ≤ C² w² a Σ a_j`, so
//! `L2 = C·w·√(a·B)`.
//!
//! **Flows** (origin–destination zone pairs): each trip adds the outer
//! product `W_o ⊗ W_d`, of L1 norm 1 and L2 norm `‖W_o‖₂‖W_d‖₂ ≤ w²`; a
//! device-day makes at most `T` trips, possibly all in one bin and pair, so
//! `L1 = T` and `L2 = T·w²` (`w = 1` when zones are the cells' own zones).
//!
//! **Presence** (devices per cell, period, segment and origin group, in
//! daily or longer output bins): the operator attributes a device, for
//! each period of a local day, to at most one cell, and the whole
//! device-day to one segment and one origin. One device-day therefore
//! adds 1 to at most one coordinate per period, all in the one output bin
//! holding its day: for `p` periods in a release, `L1 = p` and `L2 = √p`
//! (cells); spread by W, each period adds a row `W_c` (L1 ≤ 1, L2 ≤ w), so
//! `L1 = p` and `L2 = √p·w` (hexes, zones). The bin length does not enter:
//! unlike footfall, a longer bin adds days, and a device-day is one day.
//!
//! Every bound is checked against brute force on tiny grids in the tests.

use serde::{Deserialize, Serialize};

/// Operator-attested contribution bounds of one device-day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    pub max_cells_per_bin: u32,
    pub max_bins_per_day: u32,
    pub max_trips_per_day: u32,
}

/// Where the noise is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Discrete noise on the integer cell counts, spread over hexes by W.
    Cell,
    /// Noise on the area-weighted hex sums.
    Hex,
}

/// L1 and L2 sensitivity of a pre-noise vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    pub l1: f64,
    pub l2: f64,
}

/// Sensitivity of a footfall release.
///
/// `operator_bins_per_output_bin` is the largest number of operator bins in
/// one output bin (25 for a daily bin of hourly data: the autumn DST day);
/// `w_l2_max` is `max_c ‖W_c‖₂` (only used by the hex placement).
pub fn footfall(
    bounds: &Bounds,
    operator_bins_per_output_bin: u32,
    placement: Placement,
    w_l2_max: f64,
) -> Sensitivity {
    let c = f64::from(bounds.max_cells_per_bin);
    let b = f64::from(bounds.max_bins_per_day);
    let a = f64::from(bounds.max_bins_per_day.min(operator_bins_per_output_bin.max(1)));
    match placement {
        Placement::Cell => Sensitivity {
            l1: c * b,
            l2: (c * b * a).sqrt(),
        },
        Placement::Hex => Sensitivity {
            l1: c * b,
            l2: c * w_l2_max * (a * b).sqrt(),
        },
    }
}

/// Sensitivity of a flows release between zones whose cell weights have
/// `max ‖W_c‖₂ = w_l2_max`.
pub fn flows(bounds: &Bounds, w_l2_max: f64) -> Sensitivity {
    let t = f64::from(bounds.max_trips_per_day);
    Sensitivity {
        l1: t,
        l2: t * w_l2_max * w_l2_max,
    }
}

/// Sensitivity of a presence release of `periods` periods (1 for one
/// period, 2 for day and night together) under `placement`.
pub fn presence(periods: u32, placement: Placement, w_l2_max: f64) -> Sensitivity {
    let p = f64::from(periods.max(1));
    match placement {
        Placement::Cell => Sensitivity { l1: p, l2: p.sqrt() },
        Placement::Hex => Sensitivity {
            l1: p,
            l2: p.sqrt() * w_l2_max,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All device-day trajectories on `n_cells` cells and `n_bins` bins: for
    /// each bin a set of at most `C` cells, at most `B` non-empty bins.
    fn trajectories(n_cells: usize, n_bins: usize, c: usize, b: usize) -> Vec<Vec<Vec<usize>>> {
        let subsets: Vec<Vec<usize>> = (0u32..1 << n_cells)
            .map(|m| (0..n_cells).filter(|i| m & (1 << i) != 0).collect::<Vec<_>>())
            .filter(|s| s.len() <= c)
            .collect();
        let mut out = vec![Vec::new()];
        for _ in 0..n_bins {
            let mut next = Vec::new();
            for t in &out {
                for s in &subsets {
                    let mut t2: Vec<Vec<usize>> = t.clone();
                    t2.push(s.clone());
                    if t2.iter().filter(|x| !x.is_empty()).count() <= b {
                        next.push(t2);
                    }
                }
            }
            out = next;
        }
        out
    }

    fn norms(v: &[f64]) -> (f64, f64) {
        (
            v.iter().map(|x| x.abs()).sum(),
            v.iter().map(|x| x * x).sum::<f64>().sqrt(),
        )
    }

    /// A fixed 3-cell × 4-hex weight matrix, rows summing to 1.
    fn w() -> Vec<Vec<f64>> {
        vec![
            vec![0.7, 0.3, 0.0, 0.0],
            vec![0.1, 0.2, 0.3, 0.4],
            vec![0.0, 0.0, 0.5, 0.5],
        ]
    }

    #[test]
    fn footfall_bounds_hold_for_every_trajectory_and_cell_bounds_are_tight() {
        let w = w();
        let w2 = w.iter().map(|r| norms(r).1).fold(0.0, f64::max);
        let (n_cells, n_bins) = (3, 4);
        for c in 1..=2 {
            for b in 1..=4 {
                let bounds = Bounds {
                    max_cells_per_bin: c as u32,
                    max_bins_per_day: b as u32,
                    max_trips_per_day: 1,
                };
                let all = trajectories(n_cells, n_bins, c, b);
                for m in [1usize, 2, 4] {
                    // Output bin j holds operator bins j*m..(j+1)*m.
                    let n_out = n_bins / m;
                    let (mut cell_l1, mut cell_l2, mut hex_l1, mut hex_l2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
                    for t in &all {
                        let mut cells = vec![0.0; n_cells * n_out];
                        for (bin, set) in t.iter().enumerate() {
                            for &cell in set {
                                cells[(bin / m) * n_cells + cell] += 1.0;
                            }
                        }
                        let mut hexes = vec![0.0; 4 * n_out];
                        for j in 0..n_out {
                            for cell in 0..n_cells {
                                for h in 0..4 {
                                    hexes[j * 4 + h] += cells[j * n_cells + cell] * w[cell][h];
                                }
                            }
                        }
                        let (l1, l2) = norms(&cells);
                        cell_l1 = cell_l1.max(l1);
                        cell_l2 = cell_l2.max(l2);
                        let (l1, l2) = norms(&hexes);
                        hex_l1 = hex_l1.max(l1);
                        hex_l2 = hex_l2.max(l2);
                    }
                    let sc = footfall(&bounds, m as u32, Placement::Cell, w2);
                    let sh = footfall(&bounds, m as u32, Placement::Hex, w2);
                    let ctx = format!("C={c} B={b} m={m}");
                    assert!(
                        cell_l1 <= sc.l1 + 1e-12 && cell_l2 <= sc.l2 + 1e-12,
                        "{ctx}: cell {cell_l1} {cell_l2} vs {sc:?}"
                    );
                    assert!(
                        hex_l1 <= sh.l1 + 1e-12 && hex_l2 <= sh.l2 + 1e-12,
                        "{ctx}: hex {hex_l1} {hex_l2} vs {sh:?}"
                    );
                    // The cell bounds are attained whenever the grid is big
                    // enough to hold them (C cells, B bins spread as 'a').
                    assert!(
                        (cell_l1 - sc.l1).abs() < 1e-12,
                        "{ctx}: L1 not tight: {cell_l1} vs {}",
                        sc.l1
                    );
                    if b % b.min(m) == 0 && b / b.min(m) <= n_out {
                        assert!(
                            (cell_l2 - sc.l2).abs() < 1e-12,
                            "{ctx}: L2 not tight: {cell_l2} vs {}",
                            sc.l2
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn flows_bounds_hold_for_every_trip_sequence() {
        // Cells onto zones by W; trips (o, d) with o, d among 3 cells, up to
        // T trips in up to 2 bins.
        let w = w();
        let w2 = w.iter().map(|r| norms(r).1).fold(0.0, f64::max);
        for t_max in 1..=3u32 {
            let bounds = Bounds {
                max_cells_per_bin: 1,
                max_bins_per_day: 2,
                max_trips_per_day: t_max,
            };
            let s = flows(&bounds, w2);
            let trips: Vec<(usize, usize, usize)> = (0..2)
                .flat_map(|bin| (0..3).flat_map(move |o| (0..3).map(move |d| (bin, o, d))))
                .collect();
            // Every multiset of up to T trips.
            let mut seqs: Vec<Vec<usize>> = vec![vec![]];
            for _ in 0..t_max {
                let mut next = seqs.clone();
                for s in &seqs {
                    let start = s.last().copied().unwrap_or(0);
                    for k in start..trips.len() {
                        let mut s2 = s.clone();
                        s2.push(k);
                        next.push(s2);
                    }
                }
                seqs = next;
            }
            let (mut l1, mut l2) = (0.0f64, 0.0f64);
            for s in &seqs {
                let mut v = vec![0.0; 2 * 16];
                for &k in s {
                    let (bin, o, d) = trips[k];
                    for zo in 0..4 {
                        for zd in 0..4 {
                            v[bin * 16 + zo * 4 + zd] += w[o][zo] * w[d][zd];
                        }
                    }
                }
                let (a, b) = norms(&v);
                l1 = l1.max(a);
                l2 = l2.max(b);
            }
            assert!(
                l1 <= s.l1 + 1e-12 && l2 <= s.l2 + 1e-12,
                "T={t_max}: {l1} {l2} vs {s:?}"
            );
        }
    }

    #[test]
    fn presence_bounds_hold_for_every_attribution_and_cell_bounds_are_tight() {
        // A device-day: one segment and one origin group for the day, and
        // per period either absent or in one of 3 cells. Values are keyed
        // by (day, period, segment, origin, cell); output bins of 1 or 2
        // days; neighbours differ by one device-day on one day.
        let w = w();
        let w2 = w.iter().map(|r| norms(r).1).fold(0.0, f64::max);
        let (n_cells, n_seg, n_orig, n_days) = (3usize, 2usize, 2usize, 2usize);
        for periods in 1..=3usize {
            for days_per_bin in [1usize, 2] {
                let n_out = n_days / days_per_bin;
                let groups = n_seg * n_orig;
                let (mut cell_l1, mut cell_l2, mut hex_l1, mut hex_l2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
                // Every choice of day, segment, origin and per-period cell
                // (n_cells + 1 choices each: a cell or absent).
                let per_period = (n_cells + 1).pow(periods as u32);
                for day in 0..n_days {
                    for g in 0..groups {
                        for code in 0..per_period {
                            let mut cells = vec![0.0; n_out * periods * groups * n_cells];
                            let mut hexes = vec![0.0; n_out * periods * groups * 4];
                            let mut rest = code;
                            for p in 0..periods {
                                let choice = rest % (n_cells + 1);
                                rest /= n_cells + 1;
                                if choice == n_cells {
                                    continue;
                                }
                                let slot = ((day / days_per_bin) * periods + p) * groups + g;
                                cells[slot * n_cells + choice] += 1.0;
                                for h in 0..4 {
                                    hexes[slot * 4 + h] += w[choice][h];
                                }
                            }
                            let (l1, l2) = norms(&cells);
                            cell_l1 = cell_l1.max(l1);
                            cell_l2 = cell_l2.max(l2);
                            let (l1, l2) = norms(&hexes);
                            hex_l1 = hex_l1.max(l1);
                            hex_l2 = hex_l2.max(l2);
                        }
                    }
                }
                let sc = presence(periods as u32, Placement::Cell, w2);
                let sh = presence(periods as u32, Placement::Hex, w2);
                let ctx = format!("periods={periods} days/bin={days_per_bin}");
                assert!(
                    cell_l1 <= sc.l1 + 1e-12 && cell_l2 <= sc.l2 + 1e-12,
                    "{ctx}: {cell_l1} {cell_l2} vs {sc:?}"
                );
                assert!(
                    hex_l1 <= sh.l1 + 1e-12 && hex_l2 <= sh.l2 + 1e-12,
                    "{ctx}: {hex_l1} {hex_l2} vs {sh:?}"
                );
                assert!(
                    (cell_l1 - sc.l1).abs() < 1e-12 && (cell_l2 - sc.l2).abs() < 1e-12,
                    "{ctx}: not tight"
                );
                // The hex bound is attained too: the cell of largest ‖W_c‖₂ in every period.
                assert!((hex_l2 - sh.l2).abs() < 1e-12, "{ctx}: hex L2 {hex_l2} vs {}", sh.l2);
            }
        }
    }
}
