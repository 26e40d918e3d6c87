//! The remote endpoints of a lab of several nodes: every node's agent is told every other
//! node's pods (`PUT /v1/remote-endpoints/…` on its own API socket), so that its policies
//! select them by label. Identity numbers are per agent and no header carries them between
//! nodes, so without this a node would see another node's pods as the world. A later cluster
//! mesh fills the same list from etcd; the lab stands in for it.

use crate::{Error, Lab, LabState, PodState};
use xylem_api::{Client, RemoteEndpointRequest};

impl Lab {
    /// Tells every node's agent about every pod of the other nodes (after `lab up`).
    pub(crate) fn publish_remote_pods(&self, st: &LabState) -> Result<(), Error> {
        for pod in &st.pods {
            self.publish_remote_pod(st, pod)?;
        }
        Ok(())
    }

    /// Tells the agents of the nodes other than `pod`'s about it (a single-node lab has none).
    pub(crate) fn publish_remote_pod(&self, st: &LabState, pod: &PodState) -> Result<(), Error> {
        let req = RemoteEndpointRequest {
            node: pod.node.clone(),
            ip: pod.ip,
            labels: pod.labels.clone(),
        };
        for node in st.nodes.iter().filter(|n| n.name != pod.node) {
            Client::new(&node.api_socket)
                .put_remote_endpoint(&pod.namespace, &pod.name, &req)
                .map_err(|e| remote_failed(&node.name, pod, e))?;
        }
        Ok(())
    }

    /// Makes the agents of the nodes other than `pod`'s forget it. One that does not hold it
    /// (a pod added while its agent was down, say) is already where this would leave it.
    pub(crate) fn withdraw_remote_pod(&self, st: &LabState, pod: &PodState) -> Result<(), Error> {
        for node in st.nodes.iter().filter(|n| n.name != pod.node) {
            match Client::new(&node.api_socket).delete_remote_endpoint(&pod.namespace, &pod.name) {
                Ok(()) | Err(xylem_api::Error::Api { status: 404, .. }) => {}
                Err(e) => return Err(remote_failed(&node.name, pod, e)),
            }
        }
        Ok(())
    }
}

/// The error of telling `node`'s agent about `pod`: which agent and which pod.
fn remote_failed(node: &str, pod: &PodState, e: xylem_api::Error) -> Error {
    Error::Lab(format!(
        "telling node {node}'s agent about pod {}/{} of node {}: {e}; see its log \
         (`xylem lab status` names it)",
        pod.namespace, pod.name, pod.node
    ))
}
