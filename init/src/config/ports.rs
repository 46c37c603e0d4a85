//! Port syntax of the config: published ports of a workload (`ports = ["8080:80/tcp"]`) and the
//! host ports workloads may reach (`[network.workloads] host_ports = ["53/udp", "9100"]`).
//!
//! Owns: parsing those strings into typed values ([`PortMapping`], [`HostPort`]), with errors
//! that carry the text and say what was expected. The protocol defaults to `tcp`.
//! Must not: know key paths or lines (`validate` adds them), or touch the network.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A transport protocol a port belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default when a port names none).
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as CNI's portMappings and iptables spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Not of the expected shape.
    #[error(
        "invalid port mapping {text:?}: expected HOST:CONTAINER[/tcp|/udp], like \"8080:80/tcp\""
    )]
    MappingShape {
        /// The text as written.
        text: String,
    },
    /// Not of the expected shape.
    #[error("invalid host port {text:?}: expected PORT[/tcp|/udp], like \"53/udp\"")]
    HostPortShape {
        /// The text as written.
        text: String,
    },
    /// A port number outside 1..=65535.
    #[error("invalid port {port:?} in {text:?}: expected a number from 1 to 65535")]
    Number {
        /// The offending part.
        port: String,
        /// The whole text.
        text: String,
    },
    /// A protocol other than tcp or udp.
    #[error("invalid protocol {protocol:?} in {text:?}: expected tcp or udp")]
    Protocol {
        /// The offending part.
        protocol: String,
        /// The whole text.
        text: String,
    },
}

/// One published port: host port → container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Port on the host.
    pub host: u16,
    /// Port in the workload.
    pub container: u16,
    /// Protocol of both.
    pub protocol: Protocol,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host, self.container, self.protocol)
    }
}

/// One port on the host that workloads may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// The port.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

fn split_protocol(text: &str) -> Result<(&str, Protocol), PortError> {
    match text.split_once('/') {
        None => Ok((text, Protocol::Tcp)),
        Some((ports, "tcp")) => Ok((ports, Protocol::Tcp)),
        Some((ports, "udp")) => Ok((ports, Protocol::Udp)),
        Some((_, other)) => Err(PortError::Protocol {
            protocol: other.to_string(),
            text: text.to_string(),
        }),
    }
}

fn port_number(part: &str, text: &str) -> Result<u16, PortError> {
    let bad = || PortError::Number {
        port: part.to_string(),
        text: text.to_string(),
    };
    if part.is_empty() || !part.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    match part.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(n) => Ok(n),
    }
}

impl PortMapping {
    /// Parses `HOST:CONTAINER[/tcp|/udp]`.
    pub fn parse(text: &str) -> Result<PortMapping, PortError> {
        let (ports, protocol) = split_protocol(text)?;
        let Some((host, container)) = ports.split_once(':') else {
            return Err(PortError::MappingShape {
                text: text.to_string(),
            });
        };
        if container.contains(':') {
            return Err(PortError::MappingShape {
                text: text.to_string(),
            });
        }
        Ok(PortMapping {
            host: port_number(host, text)?,
            container: port_number(container, text)?,
            protocol,
        })
    }
}

impl HostPort {
    /// Parses `PORT[/tcp|/udp]`.
    pub fn parse(text: &str) -> Result<HostPort, PortError> {
        let (port, protocol) = split_protocol(text)?;
        if port.contains(':') {
            return Err(PortError::HostPortShape {
                text: text.to_string(),
            });
        }
        Ok(HostPort {
            port: port_number(port, text)?,
            protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_parse_with_tcp_by_default() {
        assert_eq!(
            PortMapping::parse("8080:80/tcp"),
            Ok(PortMapping {
                host: 8080,
                container: 80,
                protocol: Protocol::Tcp
            })
        );
        assert_eq!(
            PortMapping::parse("5353:53/udp").map(|p| p.protocol),
            Ok(Protocol::Udp)
        );
        assert_eq!(
            PortMapping::parse("80:80").map(|p| p.protocol),
            Ok(Protocol::Tcp)
        );
        assert_eq!(
            PortMapping::parse("8080:80/tcp").map(|p| p.to_string()),
            Ok("8080:80/tcp".to_string())
        );
    }

    #[test]
    fn bad_mappings_name_the_text_and_the_part() {
        let e = |t: &str| PortMapping::parse(t).err().map(|e| e.to_string());
        assert_eq!(
            e("8080"),
            Some("invalid port mapping \"8080\": expected HOST:CONTAINER[/tcp|/udp], like \"8080:80/tcp\"".into())
        );
        assert_eq!(
            e("0:80"),
            Some("invalid port \"0\" in \"0:80\": expected a number from 1 to 65535".into())
        );
        assert_eq!(
            e("8080:70000"),
            Some(
                "invalid port \"70000\" in \"8080:70000\": expected a number from 1 to 65535"
                    .into()
            )
        );
        assert_eq!(
            e("8080:80/sctp"),
            Some("invalid protocol \"sctp\" in \"8080:80/sctp\": expected tcp or udp".into())
        );
        assert!(e("1.2.3.4:8080:80").is_some());
        assert!(e("+80:80").is_some());
        assert!(e(":80").is_some());
    }

    #[test]
    fn host_ports_parse() {
        assert_eq!(
            HostPort::parse("53/udp"),
            Ok(HostPort {
                port: 53,
                protocol: Protocol::Udp
            })
        );
        assert_eq!(
            HostPort::parse("9100").map(|p| p.to_string()),
            Ok("9100/tcp".into())
        );
        assert!(matches!(
            HostPort::parse("80:80"),
            Err(PortError::HostPortShape { .. })
        ));
        assert!(matches!(
            HostPort::parse("x"),
            Err(PortError::Number { .. })
        ));
    }
}
