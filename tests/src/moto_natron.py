"""moto_server, with the one EC2 behaviour natron's lab needs that moto
5.2.5 lacks (measured; see ../shared/notes/ec2-emulator.md):

AWS associates an Elastic IP with the private address AssociateAddress
names (PrivateIpAddress, a secondary one too: a NAT's address pool) and
reports the interface's instance. moto ignores PrivateIpAddress: the
interface's primary address gets the Elastic IP (replacing its public IP)
and, associated by interface, the address shows no instance. This wraps
AssociateAddress and DisassociateAddress to behave as AWS does for a
secondary address, and leaves every other call as moto has it.

Run as moto_server: python3 moto_natron.py -H HOST -p PORT.
"""

import sys

from moto.ec2.models.elastic_ip_addresses import ElasticAddress, ElasticAddressBackend
from moto.ec2.responses.elastic_ip_addresses import ElasticIPAddresses
from moto.server import main

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
