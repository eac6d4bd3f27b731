//! EC2 errors as the Query API reports them: a code, a message and an HTTP status.

use std::fmt::Display;

/// An error the simulated EC2 returns to its client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub code: String,
    pub message: String,
}

impl Ec2Error {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The HTTP status EC2 sends with this code: throttling and unavailability are 503, server
    /// faults 500, authentication 401, the rest are client errors.
    pub fn status(&self) -> u16 {
        match self.code.as_str() {
            "RequestLimitExceeded" | "Unavailable" | "ServiceUnavailable" => 503,
            "InternalError" | "InternalFailure" => 500,
            "AuthFailure" | "MissingAuthenticationToken" => 401,
            _ => 400,
        }
    }

    pub fn missing(param: &str) -> Self {
        Self::new(
            "MissingParameter",
            format!("the request must contain the parameter {param}"),
        )
    }

    pub fn invalid_value(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterValue", message)
    }

    pub fn combination(message: impl Into<String>) -> Self {
        Self::new("InvalidParameterCombination", message)
    }

    pub fn eni_not_found(id: impl Display) -> Self {
        Self::new(
            "InvalidNetworkInterfaceID.NotFound",
            format!("the networkInterface ID '{id}' does not exist"),
        )
    }

    pub fn attachment_not_found(id: impl Display) -> Self {
        Self::new(
            "InvalidAttachmentID.NotFound",
            format!("the attachment ID '{id}' does not exist"),
        )
    }

    pub fn subnet_not_found(id: impl Display) -> Self {
        Self::new(
            "InvalidSubnetID.NotFound",
            format!("the subnet ID '{id}' does not exist"),
        )
    }

    pub fn instance_not_found(id: impl Display) -> Self {
        Self::new(
            "InvalidInstanceID.NotFound",
            format!("the instance ID '{id}' does not exist"),
        )
    }

    pub fn group_not_found(id: impl Display) -> Self {
        Self::new(
            "InvalidGroup.NotFound",
            format!("the security group '{id}' does not exist"),
        )
    }

    pub fn association_not_found(id: impl Display) -> Self {
        Self::new(
            "InvalidAssociationID.NotFound",
            format!("the association ID '{id}' does not exist"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("InternalError", message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_code() {
        assert_eq!(
            Ec2Error::new("RequestLimitExceeded", "slow down").status(),
            503
        );
        assert_eq!(Ec2Error::eni_not_found("eni-1").status(), 400);
        assert_eq!(Ec2Error::internal("boom").status(), 500);
        assert_eq!(Ec2Error::new("AuthFailure", "who").status(), 401);
    }
}
