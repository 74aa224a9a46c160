"""moto_server, with the EC2 behaviours natron's lab needs that moto
5.2.5 lacks (measured; see ../shared/notes/ec2-emulator.md):

1. Subnets' IPv6. moto ignores ModifySubnetAttribute's EnableDns64 and
DescribeSubnets never reports it; AWS keeps it per subnet. This keeps it.
DescribeSubnets also reports an IPv6 block's state nested one level too
deep (state.state.State), so that it reads as no state; this reports it
as AWS does.

2. AWS associates an Elastic IP with the private address AssociateAddress
names (PrivateIpAddress, a secondary one too: a NAT's address pool) and
reports the interface's instance. moto ignores PrivateIpAddress: the
interface's primary address gets the Elastic IP (replacing its public IP)
and, associated by interface, the address shows no instance. This wraps
AssociateAddress and DisassociateAddress to behave as AWS does for a
secondary address.

Every other call is as moto has it.

Run as moto_server: python3 moto_natron.py -H HOST -p PORT.
"""

import sys

from moto.ec2.models.elastic_ip_addresses import ElasticAddress, ElasticAddressBackend
from moto.ec2.models.subnets import Subnet
from moto.ec2.responses.elastic_ip_addresses import ElasticIPAddresses
from moto.ec2.responses.subnets import Subnets
from moto.server import main

# 1. DNS64: DescribeSubnets serializes the attribute named after the
# field (EnableDns64 -> enable_dns64); off until set.
Subnet.enable_dns64 = False
_modify_subnet_attribute = Subnets.modify_subnet_attribute


def _modify_subnet_attribute_dns64(self):
    value = self._get_param("EnableDns64.Value")
    if value is not None:
        subnet = self.ec2_backend.get_subnet(self._get_param("SubnetId"))
        subnet.enable_dns64 = str(value).lower() == "true"
    return _modify_subnet_attribute(self)


Subnets.modify_subnet_attribute = _modify_subnet_attribute_dns64


def _ipv6_cidr_block_association_set(self):
    return [
        {
            "Ipv6CidrBlock": a["ipv6CidrBlock"],
            "AssociationId": a["associationId"],
            "Ipv6CidrBlockState": {"State": a["ipv6CidrBlockState"]["State"]},
        }
        for a in self.ipv6_cidr_block_associations.values()
        if a["ipv6CidrBlockState"]["State"] == "associated"
    ]


Subnet.ipv6_cidr_block_association_set = property(_ipv6_cidr_block_association_set)

# 2. Elastic IPs on secondary addresses.

_private_ip = ElasticAddress.private_ip_address


def _private_ip_address(self):
    return getattr(self, "natron_private_ip", None) or _private_ip.fget(self)


ElasticAddress.private_ip_address = property(_private_ip_address)

_associate = ElasticIPAddresses.associate_address


def _associate_address(self):
    private_ip = self._get_param("PrivateIpAddress")
    eni = None
    if "NetworkInterfaceId" in self._get_params():
        eni = self.ec2_backend.get_network_interface(self._get_param("NetworkInterfaceId"))
    secondary = eni is not None and private_ip and private_ip != eni.private_ip_address
    if secondary:
        known = [p.get("PrivateIpAddress") for p in (eni.private_ip_addresses or [])]
        assert private_ip in known, f"{private_ip} is not an address of {eni.id}: {known}"
    public_before = eni.public_ip if eni is not None else None
    result = _associate(self)
    if eni is not None:
        if self._get_param("AllocationId"):
            eip = self.ec2_backend.address_by_allocation([self._get_param("AllocationId")])[0]
        else:
            eip = self.ec2_backend.address_by_ip([self._get_param("PublicIp")])[0]
        eip.natron_private_ip = private_ip if secondary else None
        if secondary:
            # The primary address keeps its own public IP.
            eni.public_ip = public_before
        if eip.instance is None and getattr(eni, "instance", None) is not None:
            eip.instance = eni.instance
    return result


ElasticIPAddresses.associate_address = _associate_address

_disassociate = ElasticAddressBackend.disassociate_address


def _disassociate_address(self, address=None, association_id=None):
    if address:
        eip = self.address_by_ip([address])[0]
    else:
        eip = self.address_by_association([association_id])[0]
    if getattr(eip, "natron_private_ip", None) and eip.eni is not None:
        eni, public_before = eip.eni, eip.eni.public_ip
        eip.natron_private_ip = None
        _disassociate(self, address=address, association_id=association_id)
        eni.public_ip = public_before
        return None
    return _disassociate(self, address=address, association_id=association_id)


ElasticAddressBackend.disassociate_address = _disassociate_address

if __name__ == "__main__":
    sys.exit(main())
