//! Consistent sampling: the keep/drop decision is a function of the trace id alone (plus the
//! producer's own decision when a header carries one), so the tracers on the producer's and
//! the consumer's nodes keep the same traces without talking. The ratio test is the one the
//! OpenTelemetry SDKs use for `traceidratio`, so a trace an instrumented application sampled at
//! the same ratio is kept here too.

/// `OTEL_TRACES_SAMPLER` values understood, and the ratio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// Fraction of traces kept, 0.0 to 1.0.
    pub ratio: f64,
    /// Follow the sampled flag of a context found in the record headers.
    pub parent_based: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerConfigError {
    #[error(
        "unsupported OTEL_TRACES_SAMPLER {0:?}: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
    )]
    Unknown(String),
    #[error("OTEL_TRACES_SAMPLER_ARG {0:?} is not a ratio between 0 and 1")]
    BadRatio(String),
}

impl Default for Sampler {
    /// The OpenTelemetry default: `parentbased_always_on`.
    fn default() -> Self {
        Self {
            ratio: 1.0,
            parent_based: true,
        }
    }
}

impl Sampler {
    /// From `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (the ratio, default 1.0).
    pub fn from_otel(sampler: Option<&str>, arg: Option<&str>) -> Result<Self, SamplerConfigError> {
        let ratio = || -> Result<f64, SamplerConfigError> {
            match arg {
                None => Ok(1.0),
                Some(a) => a
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| SamplerConfigError::BadRatio(a.to_string())),
            }
        };
        let (ratio, parent_based) = match sampler.map(str::trim).unwrap_or("parentbased_always_on")
        {
            "always_on" => (1.0, false),
            "always_off" => (0.0, false),
            "traceidratio" => (ratio()?, false),
            "parentbased_always_on" => (1.0, true),
            "parentbased_always_off" => (0.0, true),
            "parentbased_traceidratio" => (ratio()?, true),
            other => return Err(SamplerConfigError::Unknown(other.to_string())),
        };
        Ok(Self {
            ratio,
            parent_based,
        })
    }

    /// Whether the trace is kept by the ratio alone.
    pub fn ratio_keeps(&self, trace_id: &[u8; 16]) -> bool {
        // As OpenTelemetry's TraceIdRatioBased: the low 63 bits of the id's last 8 bytes
        // against the ratio scaled to 2^63.
        let bound = (self.ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
        let x = u64::from_be_bytes(trace_id[8..16].try_into().expect("8 bytes")) >> 1;
        x < bound || self.ratio >= 1.0
    }

    /// The decision for a span: errors and slow requests are always kept; a sampled flag from
    /// the producer decides when parent-based; the ratio decides otherwise.
    pub fn keep(
        &self,
        trace_id: &[u8; 16],
        parent_sampled: Option<bool>,
        error: bool,
        slow: bool,
    ) -> bool {
        if error || slow {
            return true;
        }
        match parent_sampled {
            Some(s) if self.parent_based => s,
            _ => self.ratio_keeps(trace_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> [u8; 16] {
        let mut t = [0u8; 16];
        t[8..].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        t[0] = 1;
        t
    }

    #[test]
    fn otel_variables_are_honoured() {
        assert_eq!(Sampler::from_otel(None, None).unwrap(), Sampler::default());
        assert_eq!(
            Sampler::from_otel(Some("traceidratio"), Some("0.25")).unwrap(),
            Sampler {
                ratio: 0.25,
                parent_based: false
            }
        );
        assert_eq!(
            Sampler::from_otel(Some("parentbased_traceidratio"), Some("0.5"))
                .unwrap()
                .ratio,
            0.5
        );
        assert_eq!(
            Sampler::from_otel(Some("always_off"), None).unwrap().ratio,
            0.0
        );
        assert!(matches!(
            Sampler::from_otel(Some("jaeger_remote"), None),
            Err(SamplerConfigError::Unknown(_))
        ));
        assert!(matches!(
            Sampler::from_otel(Some("traceidratio"), Some("2")),
            Err(SamplerConfigError::BadRatio(_))
        ));
    }

    #[test]
    fn ratio_keeps_about_that_fraction_and_is_a_function_of_the_id() {
        let half = Sampler {
            ratio: 0.5,
            parent_based: false,
        };
        let kept = (0..10_000).filter(|&n| half.ratio_keeps(&id(n))).count();
        assert!((4_700..5_300).contains(&kept), "{kept}");
        // Two samplers (two nodes) decide the same for every id.
        let other = Sampler {
            ratio: 0.5,
            parent_based: true,
        };
        assert!((0..1000).all(|n| half.ratio_keeps(&id(n)) == other.ratio_keeps(&id(n))));
        // A smaller ratio keeps a subset.
        let tenth = Sampler {
            ratio: 0.1,
            parent_based: false,
        };
        assert!((0..1000).all(|n| !tenth.ratio_keeps(&id(n)) || half.ratio_keeps(&id(n))));
        assert!((0..1000).all(|n| {
            Sampler {
                ratio: 1.0,
                parent_based: false,
            }
            .ratio_keeps(&id(n))
        }));
        assert!((0..1000).all(|n| {
            !Sampler {
                ratio: 0.0,
                parent_based: false,
            }
            .ratio_keeps(&id(n))
        }));
    }

    #[test]
    fn parents_errors_and_slow_requests() {
        let s = Sampler {
            ratio: 0.0,
            parent_based: true,
        };
        assert!(s.keep(&id(1), Some(true), false, false));
        assert!(!s.keep(&id(1), Some(false), false, false));
        assert!(!s.keep(&id(1), None, false, false));
        assert!(
            s.keep(&id(1), Some(false), true, false),
            "errors always kept"
        );
        assert!(
            s.keep(&id(1), None, false, true),
            "slow requests always kept"
        );
        let ratio_only = Sampler {
            ratio: 0.0,
            parent_based: false,
        };
        assert!(!ratio_only.keep(&id(1), Some(true), false, false));
    }
}
