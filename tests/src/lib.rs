//! Harness shared by the integration suites.
