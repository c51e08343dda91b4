"""The support assistant both ways: an LCEL chain (legacy) and a LangGraph graph (candidate), on a fake LLM.

The model is langchain-core's `GenericFakeChatModel`, taught to answer from a small FAQ: like a real LLM it
phrases the same answer differently from call to call, and it reports token usage. No network, no API key.
Each way answers with the same shape: `{"id", "answer", "tokens"}` (the message id, the text, the tokens).

Three candidates: `healthy` (the graph, right), `wrong` (its router sends 30% of the questions to the
wrong FAQ entry: fluent, confident and wrong) and `regression` (its retrieval node fails on 15% of them).
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, StateGraph

# Each question has a few phrasings of its one right answer: a model never says it the same way twice.
FAQ: dict[str, list[str]] = {
    "How do I reset my password?": [
        "Open Settings, choose Security, then Reset password, and follow the link we email you.",
        "Open Settings, pick Security, then Reset password, and follow the link we send you by email.",
        "Go to Settings, choose Security, then Reset password, and follow the emailed link.",
    ],
    "Can I get a refund?": [
        "Yes: you can request a refund within 30 days of purchase from the Orders page.",
        "Yes, you can ask for a refund within 30 days of purchase on the Orders page.",
        "You can request a refund within 30 days of your purchase from the Orders page.",
    ],
    "How do I export my data?": [
        "Use Account, then Export, to download all your data as a ZIP file of CSV files.",
        "Go to Account, then Export, to download all of your data as a ZIP of CSV files.",
        "Use Account and Export to download your data as one ZIP file of CSV files.",
    ],
    "Which plans include SSO?": [
        "Single sign-on (SSO) is included in the Business and Enterprise plans.",
        "SSO (single sign-on) comes with the Business and Enterprise plans.",
        "The Business and Enterprise plans include single sign-on (SSO).",
    ],
    "How do I invite a teammate?": [
        "Open Team, click Invite and enter their email address; they will get a link to join.",
        "Go to Team, click Invite and type their email address; they get a link to join.",
        "Open Team, press Invite and enter their email address, and they will receive a join link.",
    ],
    "Where can I see my invoices?": [
        "Your invoices are listed under Billing, then Invoices, each one downloadable as a PDF.",
        "Open Billing, then Invoices, to see your invoices; each one downloads as a PDF.",
        "Invoices are listed under Billing, then Invoices, and each one can be downloaded as a PDF.",
    ],
}
QUESTIONS = list(FAQ)
SYSTEM = "You are the support assistant. Answer in one sentence."
THINKING = 0.3  # seconds the fake LLM takes to answer: the call's cost in time, as a real one's would be


class FaqChatModel(GenericFakeChatModel):
    """langchain-core's generic fake chat model, answering the last question from the FAQ in one of its
    phrasings, with token usage; its streaming (word by word) is the fake model's own."""

    faq: dict[str, list[str]]
    thinking: float = THINKING

    def _reply(self, messages: list[BaseMessage]) -> ChatResult:
        question = str(messages[-1].content)
        text = random.choice(self.faq.get(question, ["Sorry, I do not know that one."]))
        prompt_tokens = sum(len(str(m.content).split()) for m in messages)
        usage = {"input_tokens": prompt_tokens, "output_tokens": len(text.split()),
                 "total_tokens": prompt_tokens + len(text.split())}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text, usage_metadata=usage))])

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        time.sleep(self.thinking)
        return self._reply(messages)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        await asyncio.sleep(self.thinking)
        return self._reply(messages)


def model() -> FaqChatModel:
    """The fake LLM both implementations call."""
    return FaqChatModel(messages=iter(()), faq=FAQ)


PROMPT = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")])


def _answer(message: AIMessage) -> dict[str, Any]:
    usage = message.usage_metadata or {}
    return {"id": message.id, "answer": message.content, "tokens": usage.get("total_tokens", 0)}


# --- legacy: the LCEL chain ------------------------------------------------------------------------------


class Chain:
    """The legacy assistant: `prompt | model`, its answer shaped by the call site."""

    def __init__(self) -> None:
        self.runnable = PROMPT | model()
        self.text = PROMPT | model() | StrOutputParser()

    def answer(self, question: str) -> dict[str, Any]:
        return _answer(self.runnable.invoke({"question": question}))

    async def aanswer(self, question: str) -> dict[str, Any]:
        return _answer(await self.runnable.ainvoke({"question": question}))

    def stream(self, question: str) -> Iterator[str]:
        yield from self.text.stream({"question": question})

    async def astream(self, question: str) -> AsyncIterator[str]:
        async for chunk in self.text.astream({"question": question}):
            yield chunk


# --- candidate: the LangGraph graph -----------------------------------------------------------------------


class State(TypedDict, total=False):
    question: str
    topic: str
    message: AIMessage


class Graph:
    """The candidate assistant: a LangGraph graph that routes the question to its FAQ topic, then generates.

    `fault="wrong"` makes the router pick the wrong topic for 30% of the questions; `fault="regression"`
    makes the route node raise for 15% of them (a KeyError from a lookup the rewrite got wrong).
    """

    def __init__(self, fault: str | None = None) -> None:
        self.fault = fault
        self.llm = model()
        builder = StateGraph(State)
        builder.add_node("route", self._route)
        # One node, both ways: `invoke` runs the sync function, `ainvoke` the coroutine.
        builder.add_node("generate", RunnableLambda(self._generate, afunc=self._agenerate))
        builder.add_edge(START, "route")
        builder.add_edge("route", "generate")
        builder.add_edge("generate", END)
        self.graph = builder.compile()

    def _route(self, state: State) -> State:
        question = state["question"]
        draw = random.random()
        if self.fault == "regression" and draw < 0.15:
            raise KeyError(f"no topic index for {question!r}")
        if self.fault == "wrong" and draw < 0.30:
            # The rewritten router's bug: a neighbouring topic, answered fluently.
            return {"topic": QUESTIONS[(QUESTIONS.index(question) + 1) % len(QUESTIONS)]}
        return {"topic": question}

    def _generate(self, state: State) -> State:
        return {"message": (PROMPT | self.llm).invoke({"question": state["topic"]})}

    async def _agenerate(self, state: State) -> State:
        return {"message": await (PROMPT | self.llm).ainvoke({"question": state["topic"]})}

    def answer(self, question: str) -> dict[str, Any]:
        return _answer(self.graph.invoke({"question": question})["message"])

    async def aanswer(self, question: str) -> dict[str, Any]:
        return _answer((await self.graph.ainvoke({"question": question}))["message"])

    def stream(self, question: str) -> Iterator[str]:
        for chunk, _meta in self.graph.stream({"question": question}, stream_mode="messages"):
            if isinstance(chunk, AIMessageChunk) and chunk.content:
                yield str(chunk.content)

    async def astream(self, question: str) -> AsyncIterator[str]:
        async for chunk, _meta in self.graph.astream({"question": question}, stream_mode="messages"):
            if isinstance(chunk, AIMessageChunk) and chunk.content:
                yield str(chunk.content)


def text_of(answer: Any) -> str:
    """What two answers are compared on (the call site's `clean=`): the text, of a whole or a streamed answer."""
    return answer["answer"] if isinstance(answer, dict) else str(answer)


def tokens(answer: Any) -> float:
    """A call's cost in tokens (the call site's `cost=`): the model's usage report, or for a streamed answer
    (which carries none here) its output tokens."""
    return float(answer["tokens"]) if isinstance(answer, dict) else float(len(str(answer).split()))


def user_of(i: int) -> str:
    """The sticky key: a user id."""
    return f"user-{zlib.crc32(str(i).encode()) % 100_000:05d}"
