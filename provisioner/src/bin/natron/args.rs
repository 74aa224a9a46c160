//! The command line: every flag, its default and the combinations clap
//! rejects (usage errors exit 2, like every input error).

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use natron::layout::{self, PrivateRequest};

#[derive(Parser)]
#[command(
    name = "natron",
    version,
    about = "Provision and check natron NAT instances in a VPC"
)]
pub struct Cli {
    /// AWS region (default: the standard AWS configuration chain).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Named profile from the AWS configuration files.
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Output format: text, or one JSON document (docs/provisioner.md).
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Show what `apply` (or with --destroy, `destroy`) would change;
    /// changes nothing.
    Plan {
        /// Show the removal plan of `destroy` instead.
        #[arg(long, conflicts_with_all = ["azs", "private", "remove_private", "public_subnets", "ami", "ami_name", "ami_owner", "elastic_ip", "cloudwatch_metrics", "addresses", "alarms", "nat64"])]
        destroy: bool,
        #[command(flatten)]
        topology: Topology,
    },
    /// Create or update the group's NATs, then wait until they serve
    /// every private subnet.
    Apply {
        #[command(flatten)]
        topology: Topology,
        /// Do not wait for the NATs to claim their routes (subnets already
        /// in use are then associated by a later `apply`).
        #[arg(long, conflicts_with = "wait_timeout")]
        no_wait: bool,
        /// How long to wait for the NATs [default: 10m].
        #[arg(long, value_parser = humantime::parse_duration)]
        wait_timeout: Option<Duration>,
    },
    /// Remove everything tagged with the group, in dependency order. Asks
    /// on a terminal; elsewhere needs --yes.
    Destroy {
        #[command(flatten)]
        group: Group,
        /// Destroy without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Print a template that builds what `apply` would build, for
    /// CloudFormation, CDK (CfnInclude) or Terraform; changes nothing.
    Export {
        #[arg(long, value_enum)]
        format: ExportFormat,
        #[command(flatten)]
        topology: Topology,
    },
    /// Per AZ: the NAT instance, its state, the route tables it serves.
    Status(Group),
    /// Analyse the configuration of each private subnet of the group.
    Check {
        #[command(flatten)]
        group: Group,
        /// Also check this subnet (repeatable).
        #[arg(long = "subnet")]
        subnets: Vec<String>,
    },
    /// natron's disk images (AMIs).
    #[command(subcommand)]
    Image(ImageCmd),
    /// Monthly price of natron against NAT gateways for the same AZs.
    Cost {
        /// Traffic through the NATs, GB a month.
        #[arg(long)]
        gb_per_month: f64,
        /// Number of AZs (one NAT each).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        azs: u32,
        #[arg(long, default_value = layout::DEFAULT_INSTANCE_TYPE)]
        instance_type: String,
        /// Root volume of each NAT, GiB.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=16384))]
        root_gib: u32,
        /// Include the NAT Gateway's metrics in CloudWatch (`apply --cloudwatch-metrics`).
        #[arg(long)]
        cloudwatch_metrics: bool,
        /// Public addresses per NAT (`apply --addresses`): the extra
        /// Elastic IPs' hourly price.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
        addresses: u32,
        /// The group's CloudWatch alarms (`apply --alarms`).
        #[arg(long)]
        alarms: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A CloudFormation template (JSON).
    Cloudformation,
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Upload a raw image (`cargo xtask image`) to an EBS snapshot with the
    /// EBS direct API and register it as an AMI.
    Publish {
        /// The raw disk image.
        #[arg(long)]
        raw: std::path::PathBuf,
        /// AMI name, for example natron-0.1.0-x86_64.
        #[arg(long)]
        name: String,
        /// x86_64 or arm64.
        #[arg(long)]
        arch: natron::publish::Arch,
        /// Also copy the AMI to these regions (comma-separated).
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        /// Let every AWS account launch it.
        #[arg(long)]
        public: bool,
    },
}

#[derive(Args)]
pub struct Group {
    /// The VPC, for example vpc-0abc….
    #[arg(long)]
    pub vpc: String,
    /// Name of the group (tag natron:group); 1-32 of a-z 0-9 -.
    #[arg(long)]
    pub group: String,
}

#[derive(Args)]
pub struct Topology {
    #[command(flatten)]
    pub group: Group,
    /// AZ to run a NAT in (repeatable; default: every AZ with a public subnet).
    #[arg(long = "az")]
    pub azs: Vec<String>,
    /// Private subnet to serve: an id, or AZ=CIDR to create (repeatable).
    /// Subnets served by an earlier apply stay served.
    #[arg(long = "private")]
    pub private: Vec<PrivateRequest>,
    /// Served subnet to stop serving (repeatable): it gets its old route
    /// table back, then natron's table and rule go.
    #[arg(long = "remove-private")]
    pub remove_private: Vec<String>,
    /// Public subnet for the NAT of its AZ (repeatable; default: per AZ the
    /// first subnet whose route table goes to an internet gateway).
    #[arg(long = "public-subnet")]
    pub public_subnets: Vec<String>,
    #[arg(long, default_value = layout::DEFAULT_INSTANCE_TYPE)]
    pub instance_type: String,
    /// AMI id; without it, the newest image named --ami-name.
    #[arg(long, conflicts_with_all = ["ami_name", "ami_owner"])]
    pub ami: Option<String>,
    /// Name pattern of the image to use [default: natron-*].
    #[arg(long)]
    pub ami_name: Option<String>,
    /// Owner of --ami-name images: self, amazon or an account id [default: self].
    #[arg(long)]
    pub ami_owner: Option<String>,
    /// Give each AZ's NAT an Elastic IP (a stable egress address).
    #[arg(long)]
    pub elastic_ip: bool,
    /// The agents publish the NAT Gateway's metrics to CloudWatch
    /// (namespace natron; about $3 a NAT a month: `natron cost`).
    #[arg(long)]
    pub cloudwatch_metrics: bool,
    /// Public addresses each NAT spreads new connections over (1 to 50;
    /// the instance type's limit of addresses per interface applies):
    /// N-1 Elastic IPs per AZ, tagged with their slot, beside the NAT's own
    /// address. One client reaching one destination gets N x 64,512 ports.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub addresses: u32,
    /// CloudWatch alarms on the group: new connections refused for lack of
    /// a source port, and fewer NATs ready than AZs (needs
    /// --cloudwatch-metrics; $0.10 a NAT a month each: `natron cost`).
    #[arg(long, requires = "cloudwatch_metrics")]
    pub alarms: bool,
    /// NAT64 for the served subnets' IPv6 clients (the VPC needs an IPv6
    /// block): the agents translate 64:ff9b::/96 to IPv4, the subnets' route
    /// tables get 64:ff9b::/96 to their NAT and ::/0 to an egress-only
    /// internet gateway (created when the VPC has none), their subnets
    /// DNS64. Stays on in later applies; `destroy` removes it.
    #[arg(long)]
    pub nat64: bool,
}
