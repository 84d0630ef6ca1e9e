//! The metric catalogue (CONTRACT.md §4): which metrics a reading may carry, the canonical unit
//! each is stored in, the units a gateway may send instead, and the physical bounds a canonical
//! value must lie within.
//!
//! Architecture Invariant: the catalogue is static data. Looking a metric up is a `match` on the
//! name and looking a unit up is a scan of at most six entries; nothing here allocates.

/// A unit a gateway may send a metric in, and how to bring a value into the canonical unit.
///
/// The conversion is `canonical = (value - zero) * mul / div`. Prefixes that scale down are a
/// division (`W → kW` is `/ 1000`) rather than a multiplication by an inexact `0.001`, so that
/// `1500 W` is stored as exactly `1.5 kW`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unit {
    /// The symbol as written in a payload; matched exactly (`MW` is not `mW`).
    pub symbol: &'static str,
    /// Subtracted first: the value of this unit's zero in itself (`32` for °F, `273.15` for K).
    pub zero: f64,
    pub mul: f64,
    pub div: f64,
}

impl Unit {
    /// The canonical unit itself: the conversion is the identity.
    const fn canonical(symbol: &'static str) -> Self {
        Self::scaled(symbol, 1.0, 1.0)
    }

    const fn scaled(symbol: &'static str, mul: f64, div: f64) -> Self {
        Self {
            symbol,
            zero: 0.0,
            mul,
            div,
        }
    }

    /// Converts a value in this unit to the metric's canonical unit. May overflow to an infinity
    /// for absurd inputs; the caller checks finiteness.
    pub fn to_canonical(&self, value: f64) -> f64 {
        (value - self.zero) * self.mul / self.div
    }
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    /// The name stored in `measurements.metric`.
    pub name: &'static str,
    /// The canonical unit stored in `measurements.unit`; `""` for dimensionless metrics.
    pub unit: &'static str,
    /// Every unit accepted in a payload, the canonical one included.
    pub units: &'static [Unit],
    /// Inclusive physical bounds of the canonical value: anything outside is a broken sensor or a
    /// wrong unit, never a reading (`out_of_range`).
    pub min: f64,
    pub max: f64,
    /// A flow whose sign is its direction (power, energy): a one-way meter (`CONS`, `PROD`,
    /// `INJ`) cannot report it negative, a `STOR` meter can (charging).
    pub directional: bool,
    /// Only storage can report it (`state_of_charge`): allowed under `STOR` meters and on battery
    /// energy sources.
    pub storage_only: bool,
}

impl Metric {
    /// The unit a payload's `unit` field names, or the canonical unit when the field is absent.
    /// `None` when the symbol is not a unit of this metric (`invalid_unit`).
    pub fn unit(&self, symbol: Option<&str>) -> Option<&'static Unit> {
        let symbol = symbol.unwrap_or(self.unit);
        self.units.iter().find(|u| u.symbol == symbol)
    }

    /// The accepted unit symbols, comma separated, for rejection details.
    pub fn unit_list(&self) -> String {
        let mut out = String::new();
        for (i, u) in self.units.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            if u.symbol.is_empty() {
                out.push_str("\"\" (or no unit)");
            } else {
                out.push_str(u.symbol);
            }
        }
        out
    }
}

const fn metric(
    name: &'static str,
    unit: &'static str,
    units: &'static [Unit],
    min: f64,
    max: f64,
) -> Metric {
    Metric {
        name,
        unit,
        units,
        min,
        max,
        directional: false,
        storage_only: false,
    }
}

const POWER: usize = 0;
const ENERGY: usize = 1;
const VOLTAGE: usize = 2;
const CURRENT: usize = 3;
const REACTIVE_POWER: usize = 4;
const FREQUENCY: usize = 5;
const POWER_FACTOR: usize = 6;
const STATE_OF_CHARGE: usize = 7;
const TEMPERATURE: usize = 8;

/// Every metric of the catalogue, in a stable order (for listings and docs).
pub const ALL: &[Metric] = &[
    Metric {
        directional: true,
        ..metric(
            "power",
            "kW",
            &[
                Unit::scaled("W", 1.0, 1e3),
                Unit::canonical("kW"),
                Unit::scaled("MW", 1e3, 1.0),
            ],
            -1e7,
            1e7,
        )
    },
    Metric {
        directional: true,
        // A cumulative register: a STOR meter's net register may run below zero.
        ..metric(
            "energy",
            "kWh",
            &[
                Unit::scaled("Wh", 1.0, 1e3),
                Unit::canonical("kWh"),
                Unit::scaled("MWh", 1e3, 1.0),
            ],
            -1e12,
            1e12,
        )
    },
    metric(
        "voltage",
        "V",
        &[
            Unit::scaled("mV", 1.0, 1e3),
            Unit::canonical("V"),
            Unit::scaled("kV", 1e3, 1.0),
        ],
        0.0,
        1e6,
    ),
    metric(
        "current",
        "A",
        &[
            Unit::scaled("mA", 1.0, 1e3),
            Unit::canonical("A"),
            Unit::scaled("kA", 1e3, 1.0),
        ],
        -1e6,
        1e6,
    ),
    metric(
        "reactive_power",
        "kvar",
        &[
            Unit::scaled("var", 1.0, 1e3),
            Unit::canonical("kvar"),
            Unit::scaled("Mvar", 1e3, 1.0),
        ],
        -1e7,
        1e7,
    ),
    metric(
        "frequency",
        "Hz",
        &[Unit::canonical("Hz"), Unit::scaled("kHz", 1e3, 1.0)],
        0.0,
        1e3,
    ),
    metric("power_factor", "", &[Unit::canonical("")], -1.0, 1.0),
    Metric {
        storage_only: true,
        ..metric("state_of_charge", "%", &[Unit::canonical("%")], 0.0, 100.0)
    },
    metric(
        "temperature",
        "°C",
        &[
            Unit::canonical("°C"),
            Unit::canonical("C"),
            Unit::canonical("degC"),
            Unit {
                symbol: "K",
                zero: 273.15,
                mul: 1.0,
                div: 1.0,
            },
            Unit {
                symbol: "°F",
                zero: 32.0,
                mul: 5.0,
                div: 9.0,
            },
            Unit {
                symbol: "F",
                zero: 32.0,
                mul: 5.0,
                div: 9.0,
            },
        ],
        -273.15,
        2000.0,
    ),
];

/// The metric with this exact (canonical, lowercase) name.
pub fn lookup(name: &str) -> Option<&'static Metric> {
    let index = match name {
        "power" => POWER,
        "energy" => ENERGY,
        "voltage" => VOLTAGE,
        "current" => CURRENT,
        "reactive_power" => REACTIVE_POWER,
        "frequency" => FREQUENCY,
        "power_factor" => POWER_FACTOR,
        "state_of_charge" => STATE_OF_CHARGE,
        "temperature" => TEMPERATURE,
        _ => return None,
    };
    ALL.get(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_found_by_its_own_name() {
        for m in ALL {
            assert_eq!(lookup(m.name).map(|f| f.name), Some(m.name));
        }
        assert_eq!(ALL.len(), 9);
    }

    #[test]
    fn names_are_matched_exactly() {
        for name in ["Power", "POWER", " power", "power ", "pwr", "", "kW"] {
            assert!(lookup(name).is_none(), "{name:?}");
        }
    }

    #[test]
    fn every_metric_accepts_its_canonical_unit_as_the_identity() {
        for m in ALL {
            let unit = m.unit(None).expect("canonical unit listed");
            assert_eq!(unit.symbol, m.unit);
            assert_eq!(m.unit(Some(m.unit)), Some(unit));
            assert_eq!(unit.to_canonical(12.5), 12.5, "{}", m.name);
            assert!(m.min < m.max);
        }
    }

    #[test]
    fn units_convert_to_the_canonical_unit() {
        let cases: &[(&str, &str, f64, f64)] = &[
            ("power", "W", 1500.0, 1.5),
            ("power", "MW", 2.5, 2500.0),
            ("energy", "Wh", 250.0, 0.25),
            ("energy", "MWh", 1.5, 1500.0),
            ("voltage", "kV", 0.4, 400.0),
            ("voltage", "mV", 230_000.0, 230.0),
            ("current", "mA", 1500.0, 1.5),
            ("current", "kA", 2.0, 2000.0),
            ("reactive_power", "var", 500.0, 0.5),
            ("reactive_power", "Mvar", 1.0, 1000.0),
            ("frequency", "kHz", 0.05, 50.0),
            ("power_factor", "", 0.9, 0.9),
            ("temperature", "C", 21.5, 21.5),
            ("temperature", "degC", 21.5, 21.5),
            ("temperature", "K", 0.0, -273.15),
            ("temperature", "K", 373.15, 100.0),
            ("temperature", "°F", 212.0, 100.0),
            ("temperature", "F", 32.0, 0.0),
        ];
        for &(name, symbol, value, expected) in cases {
            let m = lookup(name).expect("metric");
            let unit = m.unit(Some(symbol)).expect("unit");
            let got = unit.to_canonical(value);
            assert!(
                (got - expected).abs() < 1e-9,
                "{value} {symbol} of {name} became {got}, expected {expected}"
            );
        }
    }

    #[test]
    fn units_of_other_metrics_and_case_variants_are_not_accepted() {
        let cases: &[(&str, &str)] = &[
            ("power", "kWh"),
            ("power", "kw"),
            ("power", "mW"),
            ("energy", "kW"),
            ("voltage", "A"),
            ("frequency", "mHz"),
            ("power_factor", "%"),
            ("state_of_charge", ""),
            ("temperature", "c"),
        ];
        for &(name, symbol) in cases {
            let m = lookup(name).expect("metric");
            assert!(m.unit(Some(symbol)).is_none(), "{symbol:?} for {name}");
        }
    }

    #[test]
    fn unit_lists_name_every_accepted_symbol() {
        let power = lookup("power").expect("power");
        assert_eq!(power.unit_list(), "W, kW, MW");
        let pf = lookup("power_factor").expect("pf");
        assert_eq!(pf.unit_list(), "\"\" (or no unit)");
    }
}
