//! The simulator's own control surface next to the EC2 API: call counters and injected faults.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ec2::Ec2Error;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("fault needs an error or a delay")]
    EmptyFault,
    #[error("fault for {0} has times 0")]
    ZeroTimes(String),
}

/// `POST /sim/faults` body: the next `times` calls of `action` ("*" for any) wait `delayMs`
/// and then fail with `error` when one is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    pub action: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default = "one")]
    pub times: u32,
    #[serde(default)]
    pub delay_ms: u64,
}

fn one() -> u32 {
    1
}

/// What a fault does to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub delay: Duration,
    pub error: Option<Ec2Error>,
}

#[derive(Debug, Default)]
pub struct Faults {
    pending: Vec<Fault>,
}

impl Faults {
    pub fn add(&mut self, fault: Fault) -> Result<(), ControlError> {
        if fault.error.is_none() && fault.delay_ms == 0 {
            return Err(ControlError::EmptyFault);
        }
        if fault.times == 0 {
            return Err(ControlError::ZeroTimes(fault.action));
        }
        self.pending.push(fault);
        Ok(())
    }

    pub fn clear(&mut self) {
        self.pending.clear();
    }

    pub fn pending(&self) -> &[Fault] {
        &self.pending
    }

    /// Consumes one use of the first fault that matches `action`.
    pub fn take(&mut self, action: &str) -> Option<Hit> {
        let n = self
            .pending
            .iter()
            .position(|f| f.action == action || f.action == "*")?;
        let fault = &mut self.pending[n];
        fault.times -= 1;
        let hit = Hit {
            delay: Duration::from_millis(fault.delay_ms),
            error: fault.error.as_ref().map(|code| {
                let message = fault
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("injected fault {code} for {action}"));
                Ec2Error::new(code, message)
            }),
        };
        if fault.times == 0 {
            self.pending.remove(n);
        }
        Some(hit)
    }
}

/// EC2 calls served, by action name.
#[derive(Debug, Default)]
pub struct Calls {
    counts: BTreeMap<String, u64>,
}

impl Calls {
    pub fn record(&mut self, action: &str) {
        *self.counts.entry(action.to_string()).or_default() += 1;
    }

    pub fn reset(&mut self) {
        self.counts.clear();
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(action: &str, error: Option<&str>, times: u32, delay_ms: u64) -> Fault {
        Fault {
            action: action.into(),
            error: error.map(String::from),
            message: None,
            times,
            delay_ms,
        }
    }

    #[test]
    fn faults_fire_the_given_number_of_times() {
        let mut faults = Faults::default();
        faults
            .add(fault(
                "AttachNetworkInterface",
                Some("RequestLimitExceeded"),
                2,
                0,
            ))
            .unwrap();
        assert!(faults.take("DescribeSubnets").is_none());
        let hit = faults.take("AttachNetworkInterface").unwrap();
        assert_eq!(hit.error.unwrap().status(), 503);
        assert!(faults.take("AttachNetworkInterface").is_some());
        assert!(faults.take("AttachNetworkInterface").is_none());
    }

    #[test]
    fn delays_and_wildcards() {
        let mut faults = Faults::default();
        faults.add(fault("*", None, 1, 250)).unwrap();
        let hit = faults.take("DescribeSubnets").unwrap();
        assert_eq!(hit.delay, Duration::from_millis(250));
        assert!(hit.error.is_none());
        assert!(faults.add(fault("X", None, 1, 0)).is_err());
        assert!(faults.add(fault("X", Some("E"), 0, 0)).is_err());
    }

    #[test]
    fn fault_json_uses_the_contract_names() {
        let f: Fault = serde_json::from_str(
            r#"{"action":"AttachNetworkInterface","error":"RequestLimitExceeded","times":3,"delayMs":10}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            fault(
                "AttachNetworkInterface",
                Some("RequestLimitExceeded"),
                3,
                10
            )
        );
        let calls = {
            let mut c = Calls::default();
            c.record("A");
            c.record("A");
            c.snapshot()
        };
        assert_eq!(calls["A"], 2);
    }
}
