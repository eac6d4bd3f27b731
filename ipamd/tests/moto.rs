//! An outside check of ipamd's EC2 requests and parsing: the same calls ipamd makes on a node
//! (describe limits, create, attach, delete-on-termination, assign, describe, unassign, tag,
//! detach, delete) against moto, a third-party EC2 emulator we did not write.
//!
//! Needs `moto_server` (PyPI `moto[server]`, installed by .ci/run); fails when it is missing.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use ipamd::ec2::{eni_description, eni_tags, AddressRequest, Ec2, NewEni};
use ipamd::metrics::Metrics;

struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is not installed: pip install 'moto[server]' (.ci/run does)");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on {url}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, url }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_test_credentials() {
    // moto accepts any signature; the SDK needs some credentials to sign with.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
}

/// A VPC, a subnet and a running instance, made with the plain SDK (ipamd never does this).
async fn world(url: &str) -> (String, String, String) {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-west-2"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    let sdk = aws_sdk_ec2::Client::from_conf(conf);
    let vpc = sdk
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let subnet = sdk
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.0.1.0/24")
        .availability_zone("us-west-2a")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
    let run = sdk
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .subnet_id(&subnet_id)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let instance_id = run.instances()[0].instance_id().unwrap().to_string();
    (vpc_id, subnet_id, instance_id)
}

#[tokio::test]
async fn ipamd_ec2_calls_work_against_moto() {
    set_test_credentials();
    let moto = Moto::start();
    let (_vpc, subnet, instance) = world(&moto.url).await;
    let ec2 = Ec2::connect("us-west-2", Some(&moto.url), Arc::new(Metrics::new())).await;

    let limits = ec2.instance_limits("m5.large").await.unwrap();
    assert_eq!((limits.max_enis, limits.ipv4_per_eni), (3, 10));

    let tags = eni_tags(
        &instance,
        Some("local"),
        &BTreeMap::new(),
        SystemTime::now(),
    );
    let new = NewEni {
        subnet_id: &subnet,
        security_groups: &[],
        description: eni_description(&instance),
        tags: tags.clone(),
        addresses: AddressRequest::Ips(2),
    };
    let eni = ec2.create_eni(&new).await.unwrap();
    assert!(eni.id.starts_with("eni-"), "{eni:?}");
    assert_eq!(eni.secondary_ips.len(), 2, "{eni:?}");
    for (k, v) in &tags {
        assert_eq!(eni.tags.get(k), Some(v), "tag {k} missing on {eni:?}");
    }

    let attachment = ec2.attach_eni(&eni.id, &instance, 1).await.unwrap();
    ec2.set_delete_on_termination(&eni.id, &attachment)
        .await
        .unwrap();
    let attached = ec2.attached_enis(&instance).await.unwrap();
    assert!(attached.contains(&(eni.id.clone(), 1)), "{attached:?}");

    let before = ec2.describe_eni(&eni.id).await.unwrap().cidrs();
    let answered = ec2
        .assign_addresses(&eni.id, AddressRequest::Ips(3))
        .await
        .unwrap();
    let described = ec2.describe_eni(&eni.id).await.unwrap();
    assert_eq!(described.secondary_ips.len(), 5, "{described:?}");
    // moto answers with every address of the ENI where EC2 lists only the new ones; the new
    // ones must be among them either way.
    let added: Vec<_> = described
        .cidrs()
        .into_iter()
        .filter(|c| !before.contains(c))
        .collect();
    assert_eq!(added.len(), 3, "{described:?}");
    for c in &added {
        assert!(answered.contains(c), "{c} assigned but not in {answered:?}");
    }
    assert_eq!(
        described.attachment.as_ref().map(|a| a.device_index),
        Some(1)
    );

    ec2.unassign_addresses(&eni.id, &added[..1]).await.unwrap();
    let described = ec2.describe_eni(&eni.id).await.unwrap();
    assert_eq!(described.secondary_ips.len(), 4, "{described:?}");
    assert!(!described.cidrs().contains(&added[0]));

    ec2.detach_eni(&attachment).await.unwrap();
    ec2.delete_eni(&eni.id).await.unwrap();
    let gone = ec2.describe_eni(&eni.id).await;
    assert!(gone.is_err(), "deleted ENI still described: {gone:?}");
    // Deleting again is success: ipamd treats NotFound on delete as done.
    ec2.delete_eni(&eni.id).await.unwrap();
}
