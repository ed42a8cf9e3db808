"""The Containerfile check of docker builds: RUN flags (CVE-2024-1753's bind mounts) and ADD of URLs
without network are refused however the file is written; ordinary Containerfiles pass."""

from __future__ import annotations

import pytest

from ade.execution.containerfile import instructions, problems

FINE = """\
# syntax=docker/dockerfile:1
FROM ade-test-busybox AS base
ARG GREETING
# a comment
COPY hello.txt /hello.txt
RUN echo "--mount is only text here" \\
    # a comment inside a continued instruction
    && echo done
ADD archive.tar.gz /opt/
ENV URL=https://example.invalid/
CMD ["sh"]
"""


def test_an_ordinary_containerfile_passes() -> None:
    assert problems(FINE, network=False) == []
    assert [number for number, _ in instructions(FINE)] == [2, 3, 5, 6, 9, 10, 11]
    assert instructions(FINE)[3][1] == 'RUN echo "--mount is only text here" && echo done'


@pytest.mark.parametrize(
    "text",
    [
        "FROM x\nRUN --mount=type=bind,source=link,target=/h ls /h\n",
        "FROM x\nrun   --mount=type=cache,target=/c true\n",
        "FROM x\nRUN \\\n  --mount=type=bind,target=/h ls\n",
        "FROM x\nRUN \\\n# comment\n  --network=host wget x\n",
        "# escape=`\nFROM x\nRUN `\n  --mount=type=bind,target=/h ls\n",
        "FROM x\nONBUILD RUN --mount=type=bind,target=/h ls\n",
        "FROM x\nRUN --security=insecure id\n",
    ],
)
def test_run_flags_are_refused(text: str) -> None:
    found = problems(text, network=False)
    assert found and "RUN" in found[0], found
    assert problems(text, network=True)  # network or not: a bind mount can reach the host's files


@pytest.mark.parametrize(
    "text",
    [
        "FROM x\nADD http://127.0.0.1:8000/secret /s\n",
        "FROM x\nadd --chown=1:1 https://example.invalid/a.tgz /a\n",
        "FROM x\nADD git@github.com:org/repo.git /src\n",
        'FROM x\nADD ["https://example.invalid/a", "/a"]\n',
        "FROM x\nONBUILD ADD https://example.invalid/a /a\n",
        "FROM x\nADD \\\n  https://example.invalid/a /a\n",
    ],
)
def test_add_of_a_url_needs_network(text: str) -> None:
    found = problems(text, network=False)
    assert found and "network: true" in found[0], found
    assert problems(text, network=True) == []
