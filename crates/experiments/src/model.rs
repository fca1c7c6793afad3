//! The time model: how much of btvmm's overhead on a benchmark its trap
//! counts explain at the costs `btvmm calibrate` measured in the same run.
//!
//! Each term is one monitor counter per benchmark unit (the breakdown's)
//! times the cost of the calibrate path that exercises exactly that event.
//! Paths that ride on another one (a host exit is an emulated OUT plus the
//! trip to the host) are charged only their extra over it, since the trap
//! under them is counted by its own term. The model leaves out what no
//! counter sees (the guest's own work at a different speed, cache and TLB
//! effects of the host's traps), so "explained" is what the counted events
//! cost next to what was measured: well below 100% says something
//! uncounted costs time, above says the calibrated costs overstate the
//! benchmark's (warm caches, batched events).

use std::collections::BTreeMap;

use serde::Serialize;

/// A term of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// Column title.
    pub title: &'static str,
    /// The `btvmm run --stats` counter it counts.
    pub counter: &'static str,
    /// The `btvmm calibrate` path whose cost it is charged.
    pub path: &'static str,
    /// A path whose cost is already charged by another term (subtracted).
    pub less: Option<&'static str>,
}

/// The calibrate path of an emulated #GP.
const GP_PATH: &str = "cli/sti emulated";
/// The calibrate path of an INT3 from the split view's alias and its
/// emulation: under the exit, hidden-fault and CR3 paths, whose OUT,
/// INVLPG and MOV to CR3 trap that way in the split view the benchmarks
/// run in.
const INT3_PATH: &str = "split int3 + pushf";

/// The terms, in table order.
pub const TERMS: [Term; 11] = [
    Term {
        title: "#GP",
        counter: "trap: #GP",
        path: GP_PATH,
        less: None,
    },
    Term {
        title: "INT3",
        counter: "split: int3 traps from aliases",
        path: INT3_PATH,
        less: None,
    },
    Term {
        title: "#DB",
        counter: "trap: planned breakpoint",
        path: "hw breakpoint + pushf + re-plan",
        less: None,
    },
    Term {
        title: "SIGSYS",
        counter: "trap: system call (seccomp)",
        path: "guest int 0x80 + iret",
        less: None,
    },
    Term {
        title: "timer",
        counter: "trap: kick",
        path: "interrupt injected",
        less: None,
    },
    Term {
        title: "hidden #PF",
        counter: "shadow: hidden faults mapped",
        path: "hidden fault + invlpg",
        less: Some(INT3_PATH),
    },
    Term {
        title: "guest #PF",
        counter: "shadow: guest page faults delivered",
        path: "guest #PF delivered + iret",
        less: None,
    },
    Term {
        title: "tracked write",
        counter: "shadow: writes to tracked pages emulated",
        path: "page-table write emulated",
        less: None,
    },
    Term {
        title: "interpreted",
        counter: "emulated: interpreted stretches",
        path: "instruction interpreted",
        less: None,
    },
    Term {
        title: "exit",
        counter: "exits to the host",
        path: "exit to the host and back",
        less: Some(INT3_PATH),
    },
    Term {
        title: "CR3 switch",
        counter: "pool: address-space switches",
        path: "cr3 switch (pool)",
        less: Some(INT3_PATH),
    },
];

/// Nanoseconds per event of each calibrate path (`btvmm calibrate
/// --json`'s `paths`).
pub type Costs = BTreeMap<String, f64>;

/// Reads the path costs out of `btvmm calibrate --json`'s output.
pub fn parse_costs(json: &str) -> Result<Costs, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|error| format!("not calibrate's JSON: {error}"))?;
    let paths = value["paths"]
        .as_array()
        .ok_or("calibrate's JSON has no paths")?;
    paths
        .iter()
        .map(|row| {
            let path = row["path"].as_str().ok_or("a path row without its name")?;
            let ns = row["ns"]
                .as_f64()
                .ok_or_else(|| format!("path {path:?} has no cost"))?;
            Ok((path.to_owned(), ns))
        })
        .collect()
}

/// What the model says of one benchmark.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// Per term (in [`TERMS`] order): nanoseconds per unit, or None when
    /// calibrate did not measure its path.
    pub terms: Vec<Option<f64>>,
    /// Their sum (terms without a cost count as 0).
    pub modelled_ns: f64,
    /// The paths calibrate did not measure.
    pub missing: Vec<&'static str>,
}

impl Explanation {
    /// The model for counters per unit (the breakdown's) at `costs`.
    #[must_use]
    pub fn of(per_unit: &BTreeMap<String, f64>, costs: &Costs) -> Self {
        let mut missing = Vec::new();
        let terms: Vec<Option<f64>> = TERMS
            .iter()
            .map(|term| {
                let count = per_unit.get(term.counter).copied().unwrap_or(0.0);
                let mut cost = |path: &'static str| {
                    let cost = costs.get(path).copied();
                    if cost.is_none() && !missing.contains(&path) {
                        missing.push(path);
                    }
                    cost
                };
                let full = cost(term.path)?;
                let under = match term.less {
                    Some(path) => cost(path)?,
                    None => 0.0,
                };
                Some(count * (full - under))
            })
            .collect();
        let modelled_ns = terms.iter().flatten().sum();
        Self {
            terms,
            modelled_ns,
            missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        TERMS
            .iter()
            .enumerate()
            .map(|(index, term)| (term.path.to_owned(), 1000.0 * (index as f64 + 1.0)))
            .chain([(INT3_PATH.to_owned(), 1000.0)])
            .collect()
    }

    #[test]
    fn the_breakdown_counts_every_terms_counter() {
        let per_unit = crate::results::per_unit(&BTreeMap::new(), &BTreeMap::new(), 1);
        for term in TERMS {
            assert!(
                per_unit.contains_key(term.counter),
                "{} is counted by no breakdown",
                term.counter
            );
        }
    }

    #[test]
    fn terms_are_counts_times_costs_with_the_trap_under_them_taken_off() {
        let per_unit: BTreeMap<String, f64> = [
            ("trap: #GP".to_owned(), 3.0),
            ("exits to the host".to_owned(), 2.0),
            ("emulated: interpreted stretches".to_owned(), 10.0),
        ]
        .into_iter()
        .collect();
        let mut costs = costs();
        costs.insert("exit to the host and back".into(), 6000.0);
        costs.insert("instruction interpreted".into(), 500.0);
        let explanation = Explanation::of(&per_unit, &costs);
        assert_eq!(explanation.terms[0], Some(3000.0), "3 #GP at 1 µs");
        assert_eq!(explanation.terms[8], Some(5000.0), "10 at 500 ns");
        assert_eq!(
            explanation.terms[9],
            Some(10_000.0),
            "2 x (6 µs - the INT3 under it, 1 µs)"
        );
        assert_eq!(explanation.terms[1], Some(0.0), "not counted: nothing");
        assert!((explanation.modelled_ns - 18_000.0).abs() < 1e-9);
        assert!(explanation.missing.is_empty());
    }

    #[test]
    fn a_path_calibrate_did_not_measure_is_missing_not_zero() {
        let per_unit: BTreeMap<String, f64> = [("trap: #GP".to_owned(), 1.0)].into_iter().collect();
        let mut costs = costs();
        costs.remove(INT3_PATH);
        let explanation = Explanation::of(&per_unit, &costs);
        assert_eq!(explanation.terms[0], Some(1000.0));
        assert_eq!(explanation.terms[1], None);
        assert_eq!(explanation.terms[5], None, "hidden #PF needs the INT3 too");
        assert_eq!(explanation.missing, vec![INT3_PATH]);
    }

    #[test]
    fn costs_come_from_calibrates_json() {
        let costs = parse_costs(
            r#"{"tsc_per_ns": 2.0, "bare": [], "paths": [
                {"path": "cli/sti emulated", "ns": 2500.5, "needs": "gp"},
                {"path": "instruction interpreted", "ns": 410.0}]}"#,
        )
        .expect("costs");
        assert_eq!(costs.get("cli/sti emulated"), Some(&2500.5));
        assert_eq!(costs.len(), 2);
        assert!(parse_costs("calibrate: failed").is_err());
        assert!(parse_costs(r#"{"paths": [{"path": "x"}]}"#).is_err());
    }
}
