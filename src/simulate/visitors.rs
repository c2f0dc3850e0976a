//! Who the simulated devices are: residents, tourists (who spend the night)
//! and excursionists (day visitors), and where visitors come from.
//!
//! The numbers are those of the footfall model ([`super::model`]): the same
//! residents, the same tourists per day, the same match crowds and cruise
//! passengers, plus regional day trippers, who are in the footfall too.
//! Presence attributes each of them, per period of the day, to the cell
//! where the period's hours put them most (the mean of the hourly
//! distributions over the period), as an operator does with "the cell where
//! the device spent most of the period".

use super::model::{self, DayKind, Spatial, bump, ramp};

/// French départements that send visitors: (code, inhabitants in
/// thousands, road distance from Marseille in km). Tourists come by a
/// gravity law (population / distance^0.8); Bouches-du-Rhône (13) is the
/// usual environment of most of its people, so it sends few tourists and
/// most of the day trippers.
const DEPARTEMENTS: &[(&str, f64, f64)] = &[
    ("75", 2100.0, 775.0),
    ("92", 1650.0, 780.0),
    ("93", 1660.0, 780.0),
    ("94", 1400.0, 770.0),
    ("78", 1450.0, 790.0),
    ("91", 1300.0, 760.0),
    ("77", 1420.0, 760.0),
    ("95", 1250.0, 790.0),
    ("69", 1900.0, 315.0),
    ("38", 1280.0, 280.0),
    ("74", 830.0, 420.0),
    ("63", 660.0, 470.0),
    ("59", 2600.0, 1000.0),
    ("62", 1460.0, 1050.0),
    ("67", 1150.0, 800.0),
    ("57", 1040.0, 760.0),
    ("33", 1650.0, 650.0),
    ("31", 1450.0, 400.0),
    ("44", 1450.0, 980.0),
    ("35", 1100.0, 1050.0),
    ("76", 1250.0, 950.0),
    ("34", 1200.0, 170.0),
    ("30", 750.0, 120.0),
    ("06", 1100.0, 200.0),
    ("83", 1080.0, 65.0),
    ("84", 560.0, 100.0),
    ("26", 520.0, 200.0),
    ("04", 165.0, 110.0),
    ("05", 140.0, 180.0),
    ("2A", 160.0, 330.0),
    ("13", 2040.0, 30.0),
];

/// Foreign countries of tourists: (ISO code, share of foreign tourists at
/// the year's mean, day of year of its season's peak, width in days).
const COUNTRIES: &[(&str, f64, f64, f64)] = &[
    ("DE", 0.17, 210.0, 35.0),
    ("GB", 0.14, 160.0, 55.0),
    ("IT", 0.12, 225.0, 20.0),
    ("BE", 0.10, 205.0, 30.0),
    ("US", 0.10, 175.0, 45.0),
    ("CH", 0.08, 195.0, 50.0),
    ("ES", 0.07, 226.0, 18.0),
    ("NL", 0.07, 205.0, 28.0),
    ("CA", 0.04, 190.0, 40.0),
    ("CN", 0.04, 115.0, 45.0),
    ("JP", 0.03, 100.0, 35.0),
    ("DZ", 0.04, 200.0, 30.0),
];

/// Cruise passengers by country (they are foreign excursionists: ashore
/// for the day, back on board for the night).
const CRUISE: &[(&str, f64)] = &[
    ("DE", 0.24),
    ("IT", 0.20),
    ("US", 0.20),
    ("GB", 0.15),
    ("ES", 0.11),
    ("CH", 0.10),
];

/// Day trippers from the region, and match-goers from outside the city.
const REGIONAL: &[(&str, f64)] = &[
    ("13", 0.45),
    ("83", 0.18),
    ("84", 0.11),
    ("30", 0.08),
    ("06", 0.07),
    ("04", 0.05),
    ("34", 0.03),
    ("26", 0.03),
];

/// Share of tourists who come from abroad, over the year.
const FOREIGN_SHARE: f64 = 0.35;

/// Tourists by origin code on a day, summing to `tourists`.
pub fn tourist_origins(kind: DayKind, tourists: f64) -> Vec<(&'static str, f64)> {
    let doy = f64::from(kind.doy);
    let gravity: Vec<(&str, f64)> = DEPARTEMENTS
        .iter()
        .map(|(code, pop, km)| {
            let usual = if *code == "13" { 0.05 } else { 1.0 };
            (*code, usual * pop / km.powf(0.8))
        })
        .collect();
    let g_total: f64 = gravity.iter().map(|(_, w)| w).sum();
    let foreign: Vec<(&str, f64)> = COUNTRIES
        .iter()
        .map(|(code, share, peak, width)| (*code, share * (0.35 + bump(doy, *peak, *width))))
        .collect();
    // Foreign seasons lift the foreign share in their months.
    let f_level: f64 = foreign.iter().map(|(_, w)| w).sum::<f64>();
    let f_mean: f64 = COUNTRIES.iter().map(|(_, s, ..)| s * 0.6).sum();
    let foreign_share = (FOREIGN_SHARE * f_level / f_mean).min(0.7);
    let mut out: Vec<(&str, f64)> = gravity
        .iter()
        .map(|(c, w)| (*c, tourists * (1.0 - foreign_share) * w / g_total))
        .collect();
    out.extend(
        foreign
            .iter()
            .map(|(c, w)| (*c, tourists * foreign_share * w / f_level)),
    );
    out
}

/// Regional day trippers on a day: more on weekends, holidays and in summer.
pub fn day_trippers(kind: DayKind, tourists_peak: f64) -> f64 {
    let free_day = matches!(kind.weekday, chrono::Weekday::Sat | chrono::Weekday::Sun)
        || kind.public_holiday
        || kind.school_holiday;
    0.2 * tourists_peak * (0.35 + 0.6 * kind.summer() + if free_day { 0.5 } else { 0.0 })
}

/// Share of day trippers in town at local hour `h` (10:00 to 18:00).
pub fn day_trip_presence(h: f64) -> f64 {
    ramp(h, 9.0, 11.0) * (1.0 - ramp(h, 17.0, 19.0))
}

/// Splits `total` by `shares` (weights that need not sum to 1).
pub fn split(total: f64, shares: &[(&'static str, f64)]) -> Vec<(&'static str, f64)> {
    let sum: f64 = shares.iter().map(|(_, w)| w).sum();
    shares
        .iter()
        .map(|(c, w)| (*c, total * w / sum.max(f64::MIN_POSITIVE)))
        .collect()
}

pub fn cruise_origins() -> &'static [(&'static str, f64)] {
    CRUISE
}

pub fn regional_origins() -> &'static [(&'static str, f64)] {
    REGIONAL
}

/// Where each population spends a period `[from_h, to_h)`: the mean of the
/// hourly distributions over the period's hours, and whether a population
/// that is only in town between `a` and `b` o'clock is present at all.
pub struct PeriodMix {
    pub residents: Vec<f64>,
    pub tourists: Vec<f64>,
    pub day_trippers: Vec<f64>,
    /// Share of the residents present (not away on holiday).
    pub residents_present: f64,
}

impl PeriodMix {
    pub fn new(s: &Spatial, kind: DayKind, from_h: f64, to_h: f64) -> Self {
        let n = s.home.len();
        let mut residents = vec![0.0; n];
        let mut tourists = vec![0.0; n];
        let mut present = 0.0;
        let hours: Vec<f64> = (0..48)
            .map(|k| f64::from(k) * 0.5 + 0.25)
            .filter(|h| *h >= from_h && *h < to_h)
            .collect();
        let coast = 0.25 + 0.6 * kind.summer();
        for &h in &hours {
            let sh = model::shares(h, kind);
            let out = model::tourist_out(h);
            present += 1.0 - sh.away;
            for c in 0..n {
                residents[c] += sh.home * s.home[c]
                    + sh.work * s.work[c]
                    + sh.evening * s.evening[c]
                    + sh.leisure * ((1.0 - coast) * s.leisure_town[c] + coast * s.leisure_coast[c]);
                tourists[c] += out * s.tourist_day[c] + (1.0 - out) * s.tourist_night[c];
            }
        }
        normalise(&mut residents);
        normalise(&mut tourists);
        Self {
            residents,
            tourists,
            day_trippers: s.tourist_day.clone(),
            residents_present: present / hours.len().max(1) as f64,
        }
    }
}

/// Whether `[a, b)` o'clock overlaps the period `[from_h, to_h)`.
pub fn overlaps(from_h: f64, to_h: f64, a: f64, b: f64) -> bool {
    a < to_h && from_h < b
}

fn normalise(v: &mut [f64]) {
    let s: f64 = v.iter().sum();
    if s > 0.0 {
        v.iter_mut().for_each(|x| *x /= s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: &str) -> DayKind {
        DayKind::new(d.parse().expect("date"), false, false)
    }

    #[test]
    fn tourists_split_by_origin_add_up_and_foreign_seasons_differ() {
        for d in ["2025-01-15", "2025-04-20", "2025-07-25", "2025-10-10"] {
            let o = tourist_origins(day(d), 1000.0);
            let total: f64 = o.iter().map(|(_, v)| v).sum();
            assert!((total - 1000.0).abs() < 1e-6, "{d}: {total}");
            assert!(o.iter().all(|(_, v)| *v >= 0.0));
        }
        let share = |d: &str, code: &str| {
            tourist_origins(day(d), 1.0)
                .iter()
                .find(|(c, _)| *c == code)
                .map(|x| x.1)
                .expect("code")
        };
        // Japanese visitors come in spring, Italians in August.
        assert!(share("2025-04-10", "JP") > 2.0 * share("2025-08-15", "JP"));
        assert!(share("2025-08-15", "IT") > 2.0 * share("2025-04-10", "IT"));
        // Paris sends more tourists than the Alpes-de-Haute-Provence.
        assert!(share("2025-07-01", "75") > share("2025-07-01", "04"));
    }

    #[test]
    fn day_trippers_come_on_summer_weekends_and_only_by_day() {
        assert!(day_trippers(day("2025-07-19"), 100.0) > 2.0 * day_trippers(day("2025-02-04"), 100.0));
        assert_eq!(day_trip_presence(3.0), 0.0);
        assert!(day_trip_presence(14.0) > 0.99);
        assert!(overlaps(8.0, 20.0, 10.0, 18.0) && !overlaps(0.0, 6.0, 10.0, 18.0));
    }
}
