"""Deploys a CloudFormation template on the EC2 emulator (moto), waits
for the outcome, then fills the emulator's measured CloudFormation gaps
as AWS would have done (../shared/notes/ec2-emulator.md): the Tags of
AWS::EC2::RouteTable and AWS::EC2::EIP are ignored, and an
AWS::EC2::SubnetRouteTableAssociation is recorded without associating the
subnet. Each fill is printed, then the stack's outputs as one JSON line
`OUTPUTS {...}`.

Usage: deploy_stack.py NAME TEMPLATE.json [--without-instances]

--without-instances scales the stack's auto scaling groups to zero once
the stack is complete: in the lab, the lab's own NAT instances (with
their agents) stand in for the stack's.
"""
import json
import sys
import time

import boto3

name, path = sys.argv[1], sys.argv[2]
without_instances = "--without-instances" in sys.argv[3:]
with open(path) as f:
    template = json.load(f)
cfn = boto3.client("cloudformation")
ec2 = boto3.client("ec2")
cfn.create_stack(StackName=name, TemplateBody=json.dumps(template),
                 Capabilities=["CAPABILITY_NAMED_IAM"])
for _ in range(240):
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    if not stack["StackStatus"].endswith("IN_PROGRESS"):
        break
    time.sleep(0.5)
print(stack["StackStatus"], stack.get("StackStatusReason", ""))
if stack["StackStatus"] != "CREATE_COMPLETE":
    for e in cfn.describe_stack_events(StackName=name)["StackEvents"]:
        if "FAILED" in e["ResourceStatus"]:
            print(e["LogicalResourceId"], e["ResourceStatus"], e.get("ResourceStatusReason", ""))
    sys.exit(1)

# (The emulator leaves out the physical id of resources it does not
# model, such as the IAM policy.)
physical = {
    r["LogicalResourceId"]: r.get("PhysicalResourceId")
    for r in cfn.describe_stack_resources(StackName=name)["StackResources"]
}


def value(v):
    """Ref and Fn::Join, the only intrinsics natron's tags use."""
    if isinstance(v, dict) and "Ref" in v:
        return physical[v["Ref"]]
    if isinstance(v, dict) and "Fn::Join" in v:
        sep, parts = v["Fn::Join"]
        return sep.join(value(p) for p in parts)
    return v


for logical, resource in template["Resources"].items():
    props = resource.get("Properties", {})
    kind = resource["Type"]
    if kind in ("AWS::EC2::RouteTable", "AWS::EC2::EIP") and props.get("Tags"):
        rid = physical[logical]
        if kind == "AWS::EC2::EIP" and not rid.startswith("eipalloc-"):
            rid = ec2.describe_addresses(PublicIps=[rid])["Addresses"][0]["AllocationId"]
        tags = [{"Key": t["Key"], "Value": value(t["Value"])} for t in props["Tags"]]
        ec2.create_tags(Resources=[rid], Tags=tags)
        print(f"filled: tags of {logical} ({rid})")
    if kind == "AWS::EC2::SubnetRouteTableAssociation":
        subnet, table = value(props["SubnetId"]), value(props["RouteTableId"])
        ec2.associate_route_table(SubnetId=subnet, RouteTableId=table)
        print(f"filled: association of {subnet} with {table}")

if without_instances:
    asg = boto3.client("autoscaling")
    for logical, resource in template["Resources"].items():
        if resource["Type"] == "AWS::AutoScaling::AutoScalingGroup":
            group = physical[logical]
            asg.update_auto_scaling_group(AutoScalingGroupName=group, MinSize=0, DesiredCapacity=0)
            print(f"scaled {group} to zero: the lab's NATs stand in for its instance")

stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
print("OUTPUTS " + json.dumps(outputs))
