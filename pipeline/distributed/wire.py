"""What travels between two ranks: one message is a small header (a picklable dict) and the
tensors it names, sent in order with torch.distributed point-to-point calls. Every byte is
counted: the benchmark reports them per step and per video.

Any failure of the transport (a peer gone, a timeout) becomes GroupFailed naming the peer.
"""

import pickle
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .group import GroupFailed, GroupInfo

DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.bool)}


@dataclass
class Traffic:
    bytes_sent: int = 0
    bytes_received: int = 0
    messages: int = 0

    @property
    def total(self) -> int:
        return self.bytes_sent + self.bytes_received


class Link:
    """This rank's end of the exchanges with one peer."""

    def __init__(self, group: GroupInfo, peer: int, traffic: Traffic | None = None):
        self.group, self.peer = group, peer
        self.traffic = traffic if traffic is not None else Traffic()

    def send(self, header: dict, tensors: list[torch.Tensor] = ()) -> None:
        dev = self.group.comm_device
        header = {**header, "tensors": [(tuple(t.shape), str(t.dtype)) for t in tensors]}
        try:
            dist.send_object_list([header], dst=self.peer, group=self.group.pg, device=dev)
            for t in tensors:
                dist.send(t.detach().to(dev).contiguous(), dst=self.peer, group=self.group.pg)
        except GroupFailed:
            raise
        except Exception as exc:  # DistBackendError, RuntimeError: the peer is gone or timed out
            raise GroupFailed(f"sending to rank {self.peer} failed: {exc}") from exc
        self.traffic.bytes_sent += len(pickle.dumps(header)) + sum(t.numel() * t.element_size() for t in tensors)
        self.traffic.messages += 1

    def recv(self) -> tuple[dict, list[torch.Tensor]]:
        dev = self.group.comm_device
        box = [None]
        try:
            dist.recv_object_list(box, src=self.peer, group=self.group.pg, device=dev)
            header = box[0]
            tensors = []
            for shape, dtype in header["tensors"]:
                t = torch.empty(shape, dtype=DTYPES[dtype], device=dev)
                dist.recv(t, src=self.peer, group=self.group.pg)
                tensors.append(t)
        except Exception as exc:
            raise GroupFailed(f"receiving from rank {self.peer} failed: {exc}") from exc
        self.traffic.bytes_received += len(pickle.dumps(header)) + sum(t.numel() * t.element_size() for t in tensors)
        self.traffic.messages += 1
        return header, tensors
