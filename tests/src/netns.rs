//! A private network for partition tests: every process of a cluster runs
//! in its own Linux network namespace, plugged into one bridge, so a test
//! can cut a process off the network for real (its link goes down: packets
//! to and from it are dropped, connections hang) and plug it back in.
//!
//! Layout, for a network tagged `T` (the test's pid and a counter) on
//! `10.233.X.0/24`:
//!
//! ```text
//!   root namespace (the test)      T-sw (the switch)            T-<i> (one process)
//!   Th 10.233.X.1  <--veth-->  up0 -+- br0 -+- p<i>  <--veth-->  eth0 10.233.X.<i+2>
//! ```
//!
//! The bridge lives in a namespace of its own so the host's firewall (which
//! may drop forwarded traffic) never sees the cluster's packets. The test
//! reaches every process through `Th`; cutting process `i` sets `p<i>`
//! down, which isolates it from every other process and from the test
//! alike, while the process still reaches itself over its own address.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's `ip`.
//! Dropping the [`Network`] deletes its namespaces; namespaces left behind by
//! a test process that died are deleted by the next [`Network::create`].

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace and host-side interface this module creates.
const PREFIX: &str = "eddn";
/// Networks are `10.233.X.0/24`.
const NET: &str = "10.233";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Whether this process may create network namespaces (it runs as root).
pub fn available() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `ip args...` and fails with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One process's place on the network.
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace to run it in (`ip netns exec <ns> ...`).
    pub ns: String,
    /// Its address: bind and advertise this.
    pub ip: String,
    /// The switch port it is plugged into.
    port: String,
}

/// The bridge and the namespaces of one cluster.
pub struct Network {
    tag: String,
    subnet: u8,
    /// Process name -> its host.
    hosts: BTreeMap<String, Host>,
}

impl Network {
    /// Creates the switch namespace and the test's own link to it.
    pub fn create() -> anyhow::Result<Network> {
        if !available() {
            bail!("network namespaces need root");
        }
        sweep_stale();
        let tag = format!(
            "{PREFIX}{:x}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let subnet = free_subnet()?;
        let net = Network {
            tag,
            subnet,
            hosts: BTreeMap::new(),
        };
        // From here on, Drop cleans up whatever was created.
        let sw = net.switch();
        let uplink = format!("{}h", net.tag);
        let gateway = format!("{NET}.{subnet}.1/24");
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        ip(&[
            "link", "add", &uplink, "type", "veth", "peer", "name", "up0", "netns", &sw,
        ])?;
        ip(&["addr", "add", &gateway, "dev", &uplink])?;
        ip(&["link", "set", &uplink, "up"])?;
        ip(&["-n", &sw, "link", "set", "up0", "master", "br0", "up"])?;
        tracing::info!(tag = %net.tag, subnet = %format!("{NET}.{subnet}.0/24"), "network namespaces created");
        Ok(net)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.tag)
    }

    /// A new namespace for process `name`, plugged into the bridge.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<Host> {
        let i = self.hosts.len();
        // .1 is the test; the last address is the broadcast.
        anyhow::ensure!(i + 2 < 255, "no address left for {name}");
        let host = Host {
            ns: format!("{}-{i}", self.tag),
            ip: format!("{NET}.{}.{}", self.subnet, i + 2),
            port: format!("p{i}"),
        };
        let sw = self.switch();
        ip(&["netns", "add", &host.ns])?;
        self.hosts.insert(name.to_string(), host.clone());
        ip(&["-n", &host.ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &sw, "link", "add", &host.port, "type", "veth", "peer", "name", "eth0", "netns",
            &host.ns,
        ])?;
        ip(&["-n", &sw, "link", "set", &host.port, "master", "br0", "up"])?;
        let cidr = format!("{}/24", host.ip);
        ip(&["-n", &host.ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &host.ns, "link", "set", "eth0", "up"])?;
        Ok(host)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    fn port(&self, name: &str) -> anyhow::Result<&str> {
        self.hosts
            .get(name)
            .map(|h| h.port.as_str())
            .with_context(|| format!("{name} is not on the network"))
    }

    /// Cuts `name` off: its switch port goes down, so nothing reaches it
    /// and nothing it sends leaves its namespace.
    pub fn cut(&self, name: &str) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.switch(),
            "link",
            "set",
            self.port(name)?,
            "down",
        ])
    }

    /// Plugs `name` back in.
    pub fn heal(&self, name: &str) -> anyhow::Result<()> {
        ip(&["-n", &self.switch(), "link", "set", self.port(name)?, "up"])
    }

    /// The command line that runs `bin args` in `name`'s namespace.
    pub fn wrap(
        &self,
        name: &str,
        bin: &std::path::Path,
        args: Vec<String>,
    ) -> (String, Vec<String>) {
        let host = &self.hosts[name];
        let mut wrapped = vec![
            "netns".to_string(),
            "exec".into(),
            host.ns.clone(),
            bin.display().to_string(),
        ];
        wrapped.extend(args);
        ("ip".into(), wrapped)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and with them
        // their peers.
        for host in self.hosts.values() {
            let _ = ip(&["netns", "del", &host.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
        let _ = ip(&["link", "del", &format!("{}h", self.tag)]);
    }
}

/// A `/24` under `10.233` that no interface of the root namespace uses.
fn free_subnet() -> anyhow::Result<u8> {
    let addrs = ip_output(&["-o", "-4", "addr", "show"])?;
    let start = (std::process::id() % 200) as u8;
    (0..250u16)
        .map(|k| ((u16::from(start) + k) % 250 + 1) as u8)
        .find(|x| !addrs.contains(&format!(" {NET}.{x}.")))
        .context("no free 10.233.X.0/24 network")
}

/// Deletes the namespaces (and so their links) of test processes that are
/// gone: a test killed by a timeout never runs its cleanup.
fn sweep_stale() {
    let Ok(list) = ip_output(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(ns = name, "deleting a stale network namespace");
            let _ = ip(&["netns", "del", name]);
        }
    }
}
