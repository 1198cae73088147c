"""Dialogues as text or chat messages: implicit prompts (a shared prefix) and the HH-RLHF format."""
from __future__ import annotations

import re
from typing import Union

from preftune.data.errors import BadRow

Message = dict[str, str]
Text = Union[str, list[Message]]

# Turn markers of the HH-RLHF dialogue format. A prompt taken from a common prefix ends right
# after the last assistant marker, so the reply keeps its leading space and nothing is lost.
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_MARKER = re.compile(r"\n\n(Human|Assistant): ")


def shared_turns(a: list[Message], b: list[Message]) -> int:
    """How many leading messages two message lists share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def split_common_prefix(chosen: Text, rejected: Text) -> tuple[Text, Text, Text]:
    """Split two whole dialogues into (prompt, chosen reply, rejected reply), losslessly.

    Text: the longest common prefix, cut after the last "Assistant:" marker inside it when there
    is one, else at the last whitespace. Messages: the longest common list prefix.
    prompt + reply reproduces each input exactly.
    """
    if isinstance(chosen, list) != isinstance(rejected, list):
        raise BadRow("chosen and rejected must both be text or both be message lists", "rejected")
    if isinstance(chosen, list):
        n = shared_turns(chosen, rejected)
        if n == 0:
            raise BadRow("chosen and rejected share no leading messages, so there is no implicit "
                         "prompt; give a 'prompt' field")
        return chosen[:n], chosen[n:], rejected[n:]
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    common = chosen[:n]
    marker = common.rfind("\n\nAssistant:")
    if marker >= 0:
        cut = marker + len("\n\nAssistant:")
    else:
        cut = max(common.rfind(" "), common.rfind("\n")) + 1
    if cut <= 0:
        raise BadRow("chosen and rejected share no prefix, so there is no implicit prompt; "
                     "give a 'prompt' field")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def hh_to_messages(text: str) -> list[Message]:
    """Parse a "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogue into chat messages.

    Lossless: `messages_to_hh(hh_to_messages(t)) == t`, which the caller can check; a text
    that does not start with a turn marker raises BadRow.
    """
    parts = _HH_MARKER.split(text)
    if parts[0] != "":
        raise BadRow("text does not start with a '\\n\\nHuman: ' or '\\n\\nAssistant: ' turn marker")
    return [{"role": HH_ROLES[role], "content": content} for role, content in zip(parts[1::2], parts[2::2])]


def messages_to_hh(messages: list[Message]) -> str:
    names = {v: k for k, v in HH_ROLES.items()}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages)


def hh_reply_to_messages(reply: str, field_name: str) -> list[Message]:
    """A reply split off after "Assistant:" starts with its space; parse it as assistant turns."""
    messages = hh_to_messages("\n\nAssistant:" + reply)
    if messages_to_hh(messages) != "\n\nAssistant:" + reply:
        raise BadRow("reply does not round-trip through the dialogue format", field_name)
    return messages
