"""A LangChain retriever over the streamrag HTTP API (``pip install 'streamrag[langchain]'``).

    from streamrag.integrations.langchain import StreamragRetriever
    retriever = StreamragRetriever(url="http://127.0.0.1:8300", token=token, k=4)
    docs = retriever.invoke("how do I replay the index?")

Each Document's ``page_content`` is the chunk's text; its metadata carries the citation
(doc id, title, source, heading path, page, span, version, score).
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import PrivateAttr, SecretStr

from streamrag.client import Client, Hit


class StreamragRetriever(BaseRetriever):
    url: str = "http://127.0.0.1:8300"
    token: SecretStr
    k: int = 4
    mode: Literal["dense", "hybrid"] = "dense"
    metadata_filter: dict[str, str | int | bool] | None = None
    _client: Client | None = PrivateAttr(default=None)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        if self._client is None:
            self._client = Client(self.url, self.token.get_secret_value())
        result = self._client.search(query, self.k, metadata=self.metadata_filter, mode=self.mode)
        return [as_document(h) for h in result.hits]


def as_document(hit: Hit) -> Document:
    meta: dict[str, Any] = {
        "chunk_id": hit.chunk_id,
        "doc_id": hit.doc_id,
        "title": hit.title,
        "source": hit.source,
        "heading_path": hit.heading_path,
        "page": hit.page,
        "position": hit.position,
        "start": hit.start,
        "end": hit.end,
        "version": hit.version,
        "score": hit.score,
        **{f"metadata_{k}": v for k, v in hit.metadata.items()},
    }
    return Document(page_content=hit.text or "", metadata=meta, id=hit.chunk_id)
