//! Prometheus metrics under aws-node's names, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Pool figures read from the datastore when the metrics are scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolGauges {
    pub eni_max: u32,
    pub ip_max: u32,
    pub eni_allocated: u32,
    pub total_ip_addresses: u32,
    pub assigned_ip_addresses: u32,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    add_ip_req: u64,
    del_ip_req: BTreeMap<String, u64>,
    /// (api, error, status) → (count, sum of milliseconds)
    api_latency: BTreeMap<(String, bool, String), (u64, f64)>,
    /// (api, error code) → count
    api_errors: BTreeMap<(String, String), u64>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_ip_request(&self) {
        self.lock().add_ip_req += 1;
    }

    pub fn del_ip_request(&self, reason: &str) {
        *self
            .lock()
            .del_ip_req
            .entry(reason.to_string())
            .or_default() += 1;
    }

    /// One AWS call: `error` is the error code when it failed, `status` the HTTP status if
    /// a response came back.
    pub fn aws_call(&self, api: &str, latency: Duration, error: Option<&str>, status: Option<u16>) {
        let mut c = self.lock();
        let status = status.map_or_else(|| "none".to_string(), |s| s.to_string());
        let entry = c
            .api_latency
            .entry((api.into(), error.is_some(), status))
            .or_default();
        entry.0 += 1;
        entry.1 += latency.as_secs_f64() * 1000.0;
        if let Some(code) = error {
            *c.api_errors.entry((api.into(), code.into())).or_default() += 1;
        }
    }

    /// Error count of one API and code, for tests and logs.
    pub fn aws_errors(&self, api: &str, code: &str) -> u64 {
        self.lock()
            .api_errors
            .get(&(api.to_string(), code.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn render(&self, pool: &PoolGauges) -> String {
        let mut out = String::new();
        gauge(
            &mut out,
            "awscni_eni_max",
            "The maximum number of ENIs that can be attached to the instance",
            pool.eni_max,
        );
        gauge(
            &mut out,
            "awscni_ip_max",
            "The maximum number of IP addresses that can be allocated to the instance",
            pool.ip_max,
        );
        gauge(
            &mut out,
            "awscni_eni_allocated",
            "The number of ENIs allocated",
            pool.eni_allocated,
        );
        gauge(
            &mut out,
            "awscni_total_ip_addresses",
            "The total number of IP addresses",
            pool.total_ip_addresses,
        );
        gauge(
            &mut out,
            "awscni_assigned_ip_addresses",
            "The number of IP addresses assigned to pods",
            pool.assigned_ip_addresses,
        );
        self.render_counters(&mut out);
        out
    }

    fn render_counters(&self, out: &mut String) {
        let c = self.lock();
        header(
            out,
            "awscni_add_ip_req_count",
            "The number of add IP address requests",
            "counter",
        );
        let _ = writeln!(out, "awscni_add_ip_req_count {}", c.add_ip_req);

        header(
            out,
            "awscni_del_ip_req_count",
            "The number of delete IP address requests",
            "counter",
        );
        for (reason, n) in &c.del_ip_req {
            let _ = writeln!(
                out,
                "awscni_del_ip_req_count{{reason=\"{}\"}} {n}",
                escape(reason)
            );
        }

        let name = "awscni_aws_api_latency_ms";
        header(out, name, "AWS API call latency in ms", "summary");
        for ((api, error, status), (count, sum)) in &c.api_latency {
            let labels = format!(
                "api=\"{}\",error=\"{error}\",status=\"{}\"",
                escape(api),
                escape(status)
            );
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }

        let name = "awscni_aws_api_error_count";
        header(
            out,
            name,
            "The number of times AWS API returns an error",
            "counter",
        );
        for ((api, code), n) in &c.api_errors {
            let _ = writeln!(
                out,
                "{name}{{api=\"{}\",error=\"{}\"}} {n}",
                escape(api),
                escape(code)
            );
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u32) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// Label values escape backslash, double quote and newline (exposition format).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gauges_counters_and_api_summary() {
        let m = Metrics::new();
        m.add_ip_request();
        m.add_ip_request();
        m.del_ip_request("PodDeleted");
        m.aws_call(
            "AssignPrivateIpAddresses",
            Duration::from_millis(12),
            None,
            Some(200),
        );
        m.aws_call(
            "AssignPrivateIpAddresses",
            Duration::from_millis(8),
            None,
            Some(200),
        );
        m.aws_call(
            "AttachNetworkInterface",
            Duration::from_millis(3),
            Some("RequestLimitExceeded"),
            Some(503),
        );
        let pool = PoolGauges {
            eni_max: 3,
            ip_max: 9,
            eni_allocated: 2,
            total_ip_addresses: 6,
            assigned_ip_addresses: 4,
        };
        let text = m.render(&pool);

        for line in [
            "# TYPE awscni_eni_max gauge",
            "awscni_eni_max 3",
            "awscni_ip_max 9",
            "awscni_eni_allocated 2",
            "awscni_total_ip_addresses 6",
            "awscni_assigned_ip_addresses 4",
            "awscni_add_ip_req_count 2",
            "awscni_del_ip_req_count{reason=\"PodDeleted\"} 1",
            "awscni_aws_api_latency_ms_sum{api=\"AssignPrivateIpAddresses\",error=\"false\",status=\"200\"} 20",
            "awscni_aws_api_latency_ms_count{api=\"AssignPrivateIpAddresses\",error=\"false\",status=\"200\"} 2",
            "awscni_aws_api_error_count{api=\"AttachNetworkInterface\",error=\"RequestLimitExceeded\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert_eq!(
            m.aws_errors("AttachNetworkInterface", "RequestLimitExceeded"),
            1
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
