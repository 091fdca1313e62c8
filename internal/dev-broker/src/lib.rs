//! The embedded broker: librdkafka's mock cluster, for development and tests only.
//!
//! No Kafka distribution can be installed where this project is developed, so `make run` and the
//! tests use the mock cluster that ships inside librdkafka. It speaks the Kafka protocol, so kcat,
//! Python clients and the service itself connect to it like to a real broker, and it supports fault
//! injection (request errors, brokers going down). It keeps data in memory,
//! has no replication or security, and keeps at most about 5 MiB per partition: it is not a
//! production broker.
//!
//! The mock cluster listens on ephemeral ports. To offer a fixed address (`--listen
//! 127.0.0.1:9092`) each mock broker gets a small TCP relay on the fixed port and is told to
//! advertise that port in metadata, so clients that follow metadata reconnect through the relay.
//!
//! This wraps librdkafka's C mock API directly (rdkafka's `MockCluster` hides the handle that
//! the group rebalance delay and the advertised address need).

use std::ffi::CString;
use std::net::SocketAddr;
use std::ptr::NonNull;

use anyhow::{bail, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka_sys as rdsys;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running mock cluster. Dropping it stops the cluster and its relays.
pub struct DevBroker {
    cluster: NonNull<rdsys::rd_kafka_mock_cluster_t>,
    /// The client handle that owns the cluster's threads; must outlive `cluster`.
    _handle: BaseProducer,
    bootstrap_servers: String,
    relays: Vec<JoinHandle<()>>,
}

// SAFETY: librdkafka's mock API is thread-safe: every call posts an operation to the cluster's
// own thread and waits for it.
unsafe impl Send for DevBroker {}
unsafe impl Sync for DevBroker {}

fn check(error: rdsys::rd_kafka_resp_err_t, what: &str) -> anyhow::Result<()> {
    if error == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        bail!("mock broker: {what} failed: {:?}", rdkafka::error::RDKafkaErrorCode::from(error))
    }
}

impl DevBroker {
    /// Starts a mock cluster of `brokers` brokers on ephemeral ports.
    pub fn start(brokers: i32) -> anyhow::Result<Self> {
        let handle: BaseProducer =
            ClientConfig::new().set("log_level", "3").create().context("cannot create the client that hosts the mock cluster")?;
        // SAFETY: the handle is valid for the lifetime of `DevBroker`, which destroys the cluster
        // before dropping the handle.
        let raw = unsafe { rdsys::rd_kafka_mock_cluster_new(handle.client().native_ptr(), brokers) };
        let cluster = NonNull::new(raw).context("librdkafka could not create a mock cluster")?;
        // SAFETY: `cluster` is a live mock cluster; the string it returns lives as long as it does.
        let bootstrap_servers = unsafe {
            std::ffi::CStr::from_ptr(rdsys::rd_kafka_mock_cluster_bootstraps(cluster.as_ptr())).to_string_lossy().into_owned()
        };
        let broker = DevBroker { cluster, _handle: handle, bootstrap_servers, relays: Vec::new() };
        // Consumers in a group join at once instead of after the default 3 s delay.
        // SAFETY: valid cluster pointer.
        unsafe { rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(broker.cluster.as_ptr(), 0) };
        Ok(broker)
    }

    /// Starts a mock cluster reachable at `listen` (broker `n` at `listen.port() + n - 1`).
    pub async fn start_listening(brokers: i32, listen: SocketAddr) -> anyhow::Result<Self> {
        let mut broker = Self::start(brokers)?;
        let internal: Vec<String> = broker.bootstrap_servers.split(',').map(str::to_string).collect();
        let mut advertised = Vec::new();
        for (index, target) in internal.into_iter().enumerate() {
            let id = index as i32 + 1;
            let address = SocketAddr::new(listen.ip(), listen.port() + index as u16);
            let listener =
                TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} for broker {id}"))?;
            let address = listener.local_addr()?;
            let host = CString::new(address.ip().to_string())?;
            // SAFETY: valid cluster pointer and NUL-terminated host.
            unsafe {
                rdsys::rd_kafka_mock_broker_set_host_port(broker.cluster.as_ptr(), id, host.as_ptr(), address.port() as i32)
            };
            broker.relays.push(tokio::spawn(relay(listener, target)));
            advertised.push(address.to_string());
        }
        broker.bootstrap_servers = advertised.join(",");
        Ok(broker)
    }

    /// The `bootstrap.servers` value clients should use.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Creates a topic (replication factor 1).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let name = CString::new(topic)?;
        // SAFETY: valid cluster pointer and NUL-terminated name.
        check(unsafe { rdsys::rd_kafka_mock_topic_create(self.cluster.as_ptr(), name.as_ptr(), partitions, 1) }, "create topic")
    }

    /// Makes the next `errors.len()` requests of kind `api` fail with these errors, in order.
    pub fn push_request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        let mut errors = errors.to_vec();
        // SAFETY: valid cluster pointer; the array outlives the call.
        unsafe {
            rdsys::rd_kafka_mock_push_request_errors_array(self.cluster.as_ptr(), api.into(), errors.len(), errors.as_mut_ptr())
        }
    }

    /// Takes broker `id` down: its connections are closed and it refuses new ones.
    pub fn broker_down(&self, id: i32) -> anyhow::Result<()> {
        // SAFETY: valid cluster pointer.
        check(unsafe { rdsys::rd_kafka_mock_broker_set_down(self.cluster.as_ptr(), id) }, "broker down")
    }

    /// Brings broker `id` back up.
    pub fn broker_up(&self, id: i32) -> anyhow::Result<()> {
        // SAFETY: valid cluster pointer.
        check(unsafe { rdsys::rd_kafka_mock_broker_set_up(self.cluster.as_ptr(), id) }, "broker up")
    }
}

impl Drop for DevBroker {
    fn drop(&mut self) {
        for relay in &self.relays {
            relay.abort();
        }
        // SAFETY: the cluster was created by us and is destroyed once, before the handle.
        unsafe { rdsys::rd_kafka_mock_cluster_destroy(self.cluster.as_ptr()) };
    }
}

/// Forwards every connection accepted on `listener` to `target`.
async fn relay(listener: TcpListener, target: String) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            match TcpStream::connect(&target).await {
                Ok(mut outbound) => {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(error) => {
                    tracing::debug!(%error, %target, "mock broker relay could not reach the broker")
                }
            }
        });
    }
}
