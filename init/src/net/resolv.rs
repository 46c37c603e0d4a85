//! DNS settings: `[network] nameservers`/`search` merged with what DHCP leases give, and the
//! text of `/etc/resolv.conf`.
//!
//! Owns: the merge order (the config first, then each lease in interface key order; duplicates
//! dropped, first occurrence kept; a lease's search list is option 119, else its domain name,
//! option 15) and the exact file format.
//! Must not: write files (the `Host` seam does, atomically) or know where leases come from.
//!
//! Limitations: glibc reads only the first 3 nameservers and 6 search domains; all are written,
//! in order, so the config's own entries are the ones that count.

use std::net::IpAddr;

/// What one DHCP lease contributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseDns {
    /// Option 6.
    pub nameservers: Vec<IpAddr>,
    /// Option 119, else option 15.
    pub search: Vec<String>,
}

/// The merged DNS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    /// Nameservers, in order of preference.
    pub nameservers: Vec<IpAddr>,
    /// Search domains, in order.
    pub search: Vec<String>,
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Merges the config's `nameservers` and `search` (already validated; an entry that does not
/// parse is skipped) with the leases, in the order given.
pub fn merge(nameservers: &[String], search: &[String], leases: &[LeaseDns]) -> Dns {
    let mut dns = Dns::default();
    for ns in nameservers.iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
        push_unique(&mut dns.nameservers, ns);
    }
    for domain in search {
        push_unique(&mut dns.search, domain.trim_end_matches('.').to_string());
    }
    for lease in leases {
        for ns in &lease.nameservers {
            push_unique(&mut dns.nameservers, *ns);
        }
        for domain in &lease.search {
            push_unique(&mut dns.search, domain.clone());
        }
    }
    dns
}

/// The text of `/etc/resolv.conf`.
pub fn render(dns: &Dns) -> String {
    let mut out = String::from(
        "# Written by ros from network.nameservers, network.search and DHCP; edits are lost.\n",
    );
    for ns in &dns.nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !dns.search.is_empty() {
        out.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    out
}

/// Reads back the settings of a resolv.conf text (what `render` writes, or any file in the
/// usual format): `nameserver` lines in order, the last `search` (or `domain`) line wins, as
/// in glibc. Unparsable addresses are skipped.
pub fn parse(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ns) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) {
                    push_unique(&mut dns.nameservers, ns);
                }
            }
            Some("search") | Some("domain") => {
                dns.search = words.map(|w| w.trim_end_matches('.').to_string()).collect();
            }
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_reads_back_what_render_writes() {
        let dns = Dns {
            nameservers: vec![ip("1.1.1.1"), ip("2606:4700:4700::1111")],
            search: vec!["corp.example".into(), "lab.example".into()],
        };
        assert_eq!(parse(&render(&dns)), dns);
        let odd = "# c\nnameserver  10.0.2.3 \nnameserver bogus\ndomain old.example\nsearch a.example. b\noptions ndots:2\n";
        assert_eq!(
            parse(odd),
            Dns {
                nameservers: vec![ip("10.0.2.3")],
                search: vec!["a.example".into(), "b".into()],
            }
        );
        assert_eq!(parse(""), Dns::default());
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn test_config_first_then_leases_without_duplicates() {
        let leases = [
            LeaseDns {
                nameservers: vec![ip("10.0.2.3"), ip("1.1.1.1")],
                search: vec!["lab.example".into()],
            },
            LeaseDns {
                nameservers: vec![ip("192.168.10.1"), ip("10.0.2.3")],
                search: vec!["example".into(), "lab.example".into()],
            },
        ];
        let dns = merge(
            &["1.1.1.1".into(), "2606:4700:4700::1111".into()],
            &["corp.example.".into()],
            &leases,
        );
        assert_eq!(
            render(&dns),
            "# Written by ros from network.nameservers, network.search and DHCP; edits are lost.\n\
             nameserver 1.1.1.1\n\
             nameserver 2606:4700:4700::1111\n\
             nameserver 10.0.2.3\n\
             nameserver 192.168.10.1\n\
             search corp.example lab.example example\n"
        );
    }

    #[test]
    fn test_dhcp_only_as_qemu_user_networking_gives_it() {
        let dns = merge(
            &[],
            &[],
            &[LeaseDns {
                nameservers: vec![ip("10.0.2.3")],
                search: vec![],
            }],
        );
        assert_eq!(
            render(&dns),
            "# Written by ros from network.nameservers, network.search and DHCP; edits are lost.\n\
             nameserver 10.0.2.3\n"
        );
    }

    #[test]
    fn test_nothing_known_gives_just_the_header() {
        assert_eq!(render(&merge(&[], &[], &[])).lines().count(), 1);
    }
}
