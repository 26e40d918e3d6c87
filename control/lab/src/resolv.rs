//! The pods' resolver: when a lab has a DNS server pod, every pod's libc resolver uses it.
//!
//! The DNS server pod is the one Kubernetes' convention names: namespace `kube-system`, label
//! `k8s-app: kube-dns` (its `run:` is the server, dnsmasq for instance). For each pod the lab
//! writes `/etc/netns/<pod namespace>/resolv.conf` naming that pod's address, which
//! `ip netns exec <pod namespace>` bind-mounts over `/etc/resolv.conf` for whatever it runs
//! (the pods' `run:` commands, `getent hosts`, `dig` without `@server`). So a pod resolves names
//! through the lab's DNS pod, through the dataplane and its DNS policy, and never through the
//! machine's resolver, whose configuration stays untouched.
//!
//! What it does not do: a pod reached by entering its namespace another way (`setns`,
//! `nsenter`) sees the machine's `/etc/resolv.conf`; and a lab without a DNS pod gets no file,
//! so its pods see the machine's (their queries then go through the dataplane to an address no
//! lab namespace routes).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::{Error, PodState};

/// Where `ip netns exec` looks for a namespace's own `/etc` files.
pub(crate) const NETNS_ETC: &str = "/etc/netns";

/// The address of the lab's DNS server pod, if it has one (the first, if several).
pub(crate) fn dns_server(pods: &[PodState]) -> Option<Ipv4Addr> {
    pods.iter()
        .find(|p| {
            p.namespace == "kube-system"
                && p.labels.get("k8s-app").map(String::as_str) == Some("kube-dns")
        })
        .map(|p| p.ip)
}

/// A pod's `resolv.conf` naming `server`: short timeouts, so a refused or dropped query shows
/// quickly, and no search list, so a name is asked as written.
pub(crate) fn resolv_conf(server: Ipv4Addr) -> String {
    format!(
        "# Written by xylem lab: the lab's DNS server pod.\nnameserver {server}\n\
         options timeout:2 attempts:2\n"
    )
}

/// The `resolv.conf` of the pod in namespace `netns`, under `base` ([`NETNS_ETC`]).
pub(crate) fn path_for(base: &Path, netns: &str) -> PathBuf {
    base.join(netns).join("resolv.conf")
}

/// Writes the `resolv.conf` of each of `pods` under `base` when they include a DNS server pod,
/// and records its path in the pod; does nothing otherwise.
pub(crate) fn write_all(base: &Path, pods: &mut [PodState]) -> Result<(), Error> {
    let Some(server) = dns_server(pods) else {
        return Ok(());
    };
    let text = resolv_conf(server);
    for p in pods.iter_mut() {
        let path = path_for(base, &p.netns);
        let file_err = |source| {
            Error::File(xylem_api::FileError {
                what: "writing a pod's resolv.conf",
                path: path.clone(),
                source,
            })
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(file_err)?;
        }
        std::fs::write(&path, &text).map_err(file_err)?;
        p.resolv_conf = Some(path);
    }
    Ok(())
}

/// Removes the `resolv.conf` of the pod in namespace `netns` under `base`, and its directory
/// once empty (a file someone else put there stays, with its directory).
pub(crate) fn remove(base: &Path, netns: &str) {
    let path = path_for(base, netns);
    let _ = std::fs::remove_file(&path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Removes the `resolv.conf` of every namespace under `base` whose name starts with `prefix`
/// (a lab's), also of pods the lab's state no longer lists; then `base` itself once empty.
pub(crate) fn remove_all(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            remove(base, &name);
        }
    }
    let _ = std::fs::remove_dir(base);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pod(name: &str, namespace: &str, labels: &[(&str, &str)], ip: [u8; 4]) -> PodState {
        PodState {
            name: name.into(),
            namespace: namespace.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ip: Ipv4Addr::from(ip),
            netns: format!("xylem-t-pod-{name}"),
            node: "node1".into(),
            interface: "xyp0".into(),
            run: None,
            run_log: None,
            run_pid: None,
            resolv_conf: None,
        }
    }

    #[test]
    fn the_dns_pod_is_kube_dns_in_kube_system() {
        let dns = pod(
            "dns",
            "kube-system",
            &[("k8s-app", "kube-dns")],
            [10, 0, 0, 2],
        );
        let elsewhere = pod("dns2", "default", &[("k8s-app", "kube-dns")], [10, 0, 0, 3]);
        let other = pod("web", "kube-system", &[("app", "web")], [10, 0, 0, 4]);
        assert_eq!(dns_server(&[elsewhere.clone(), other.clone()]), None);
        assert_eq!(
            dns_server(&[elsewhere, other, dns]),
            Some(Ipv4Addr::new(10, 0, 0, 2))
        );
        let text = resolv_conf(Ipv4Addr::new(10, 0, 0, 2));
        assert!(text.contains("\nnameserver 10.0.0.2\n"), "{text}");
        assert!(!text.contains("search"), "{text}");
    }

    #[test]
    fn files_are_written_only_with_a_dns_pod_and_removed_by_prefix() {
        let base = std::env::temp_dir().join(format!("xylem-resolv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let mut pods = vec![pod("client", "default", &[], [10, 0, 0, 1])];
        write_all(&base, &mut pods).unwrap();
        assert!(!base.exists(), "no DNS pod, no file");
        assert_eq!(pods[0].resolv_conf, None);

        pods.push(pod(
            "dns",
            "kube-system",
            &[("k8s-app", "kube-dns")],
            [10, 0, 0, 2],
        ));
        write_all(&base, &mut pods).unwrap();
        for p in &pods {
            let path = p.resolv_conf.clone().expect("recorded");
            assert_eq!(path, base.join(&p.netns).join("resolv.conf"));
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("nameserver 10.0.0.2"), "{text}");
        }
        // Another lab's file and a file someone else left in a lab's directory survive.
        std::fs::create_dir_all(base.join("xylem-u-pod-x")).unwrap();
        std::fs::write(base.join("xylem-u-pod-x/resolv.conf"), "x").unwrap();
        std::fs::write(base.join("xylem-t-pod-dns/hosts"), "x").unwrap();
        remove_all(&base, "xylem-t-");
        assert!(!base.join("xylem-t-pod-client").exists());
        assert!(!base.join("xylem-t-pod-dns/resolv.conf").exists());
        assert!(base.join("xylem-t-pod-dns/hosts").exists());
        assert!(base.join("xylem-u-pod-x/resolv.conf").exists());
        std::fs::remove_dir_all(&base).unwrap();
        remove_all(&base, "xylem-t-");
    }
}
