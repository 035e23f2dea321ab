"""The template zoo: chat templates that reproduce the structure of public families.

Each template in `fixtures/zoo/` is our own Jinja text, written to render what a public
family's template renders (same control tokens, same layout), and applied to the bundled
tokenizer of the same kind (SentencePiece families on Mistral-7B v0.1, byte-level ones on
Qwen2.5 or Llama 3.1) with the family's control tokens added as its real tokenizer has them:
special, or added but not special (DeepSeek V3's ``<｜User｜>``).

A `Template` also says what its conversations may hold and what the rendered text looks like,
written from the template (ground truth for `test_zoo.py`), and what `MaskSpec.from_tokenizer`
must return for it according to the SPEC (section 3):

- ``"agree"``: a spec with no warning that trains exactly the assistant bodies;
- ``"partial"``: a spec for every conversation type but `excluded`, and a `TemplateWarning`
  that names that type;
- ``"no end of turn"``: a spec with ``end_of_turn=None``, the reply running until the next
  header, and a `TemplateWarning` that says "no end of turn";
- ``"refused"``: a `MaskSpecError` whose message matches `refusal`.

>>> tok = load_zoo("phi3_mini")  # Mistral-7B v0.1's tokenizer, Phi-3's tokens, the template
>>> ZOO["phi3_mini"].expected, ZOO["phi3_mini"].excluded, ZOO["phi3_mini"].types
('partial', 'consecutive replies', ('consecutive user turns',))
"""

import dataclasses
import functools
import os

from conftest import FIXTURES, TOKENIZERS
from transformers import AutoTokenizer

ZOO_DIR = os.path.join(FIXTURES, "zoo")

# The conversation types `from_tokenizer` names in its warnings (SPEC section 3).
TYPES = (
    "system prompt",
    "consecutive user turns",
    "consecutive replies",
    "tool call",
    "tool call without content",
    "several tool calls",
    "reply after a tool result",
    "reasoning",
)
OUTCOMES = ("agree", "partial", "no end of turn", "refused")


@dataclasses.dataclass(frozen=True)
class Template:
    """One zoo template: its tokenizer, what it renders, and the outcome the SPEC asks for.

    Rendering fields (read off the template text): `eot` is the text that ends an assistant
    turn (several: whichever comes first; None: nothing does, the next header ends a reply,
    and `headers` lists the texts a header starts with); `call_open` the text a tool call
    starts with; `reply_prefix` the text the template writes between a header and a reply's
    content that the generation prompt lacks (Llama 2's space after ``[/INST]``); `think`
    the texts a rendered reasoning block starts and ends with (``<think>``, ``</think>``),
    and `reasoning_turns` when that block is an assistant turn of its own (harmony's analysis
    channel); `inline_results` the wrapper of a tool result rendered inside the assistant's
    turn.
    """

    name: str
    family: str  # the public family whose structure the template reproduces
    tokenizer: str  # a folder in fixtures/tokenizers
    eot: str | tuple[str, ...] | None
    expected: str = "agree"
    excluded: str = ""  # "partial": the conversation type the warning names
    refusal: str = ""  # "refused": a regex the error message matches
    special: tuple[str, ...] = ()  # tokens added as special tokens
    plain: tuple[str, ...] = ()  # tokens added as ordinary (not special) tokens
    bos: str | None = None
    eos: str | None = None
    headers: tuple[str, ...] = ()  # eot None: the texts the next header starts with
    system: bool = True  # renders a system message
    alternating: bool = False  # refuses anything but user/assistant alternation
    tools: str = ""  # "calls": tool calls and results; "results": tool messages only
    arguments: str = "dict"  # tool-call arguments it accepts: "dict", "string" or "both"
    call_open: str = ""
    call_content: bool = True  # renders an assistant's content beside its calls
    max_calls: int = 2
    quotes_tool_results: bool = False  # tool results rendered as JSON strings
    inline_results: tuple[str, str] | None = None
    think: tuple[str, str] | None = None  # a rendered reasoning block: (open, close)
    reasoning_turns: bool = False  # the reasoning block is an assistant turn of its own
    trims: bool = False  # strips whitespace around contents
    reply_prefix: str = ""  # trains with the reply
    classes: tuple[int, ...] = ()  # the failure classes of issue 10 it exercises

    def __post_init__(self):
        assert self.expected in OUTCOMES, self.expected
        assert (self.expected == "partial") == bool(self.excluded), self.name
        assert (self.expected == "refused") == bool(self.refusal), self.name
        assert (self.eot is None) == bool(self.headers), self.name
        assert os.path.exists(self.path), self.path

    @property
    def path(self) -> str:
        return os.path.join(ZOO_DIR, self.name + ".jinja")

    @property
    def eots(self) -> tuple[str, ...]:
        return (self.eot,) if isinstance(self.eot, str) else self.eot or ()

    @property
    def types(self) -> tuple[str, ...]:
        """The conversation types its random conversations hold (all but `excluded`)."""
        rendered = {
            "system prompt": self.system,
            "consecutive user turns": not self.alternating,
            "consecutive replies": not self.alternating,
            "tool call": self.tools == "calls",
            "tool call without content": self.tools == "calls",
            "several tool calls": self.tools == "calls" and self.max_calls > 1,
            "reply after a tool result": bool(self.tools),
            "reasoning": bool(self.think) or self.reasoning_turns,
        }
        return tuple(t for t in TYPES if rendered[t] and t != self.excluded)


SPM = "mistral7b_v01"
LLAMA3 = "llama3_1"
QWEN = "qwen2_5"
LLAMA_EOS = {"bos": "<s>", "eos": "</s>"}
MISTRAL_V3 = ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]")
MISTRAL_V3 += ("[TOOL_RESULTS]", "[/TOOL_RESULTS]")
PHI3 = ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")
COHERE = (
    "<BOS_TOKEN>",
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
)
COMMAND_A = COHERE + (
    "<|START_RESPONSE|>",
    "<|END_RESPONSE|>",
    "<|START_THINKING|>",
    "<|END_THINKING|>",
    "<|START_ACTION|>",
    "<|END_ACTION|>",
    "<|START_TOOL_RESULT|>",
    "<|END_TOOL_RESULT|>",
)
DEEPSEEK_ENDS = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
DEEPSEEK_CHAT = (
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
)
DEEPSEEK = {"bos": DEEPSEEK_ENDS[0], "eos": DEEPSEEK_ENDS[1]}
EXAONE = ("[|system|]", "[|user|]", "[|assistant|]", "[|tool|]", "[|endofturn|]")
GRANITE = ("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>")
GLM = ("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
GLM45 = GLM + ("<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>")
GLM45 += ("<arg_value>", "</arg_value>", "<tool_response>", "</tool_response>")
KIMI = ("<|im_system|>", "<|im_user|>", "<|im_assistant|>", "<|im_middle|>", "<|im_end|>")
KIMI += (
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)
HARMONY = ("<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|return|>", "<|call|>")
THINK = ("<think>", "</think>")
GEMMA = ("<start_of_turn>", "<end_of_turn>")
GEMMA4 = ("<|turn>", "<turn|>", "<|tool_call>", "<tool_call|>", "<|tool_response>")
GEMMA4 += ("<tool_response|>", '<|"|>')
CHATML = ("<|im_start|>", "<|im_end|>")
JAMBA = ("<|startoftext|>", "<|bom|>", "<|eom|>", "<|system|>", "<|user|>", "<|assistant|>")

ZOO = {
    t.name: t
    for t in [
        Template(
            "chatml_qwen2_5_tools",
            "Qwen2.5 (ChatML, tools in the system turn)",
            QWEN,
            "<|im_end|>",
            tools="calls",
            call_open="<tool_call>",
            classes=(12,),
        ),
        Template(
            "qwen3_think",
            "Qwen3 (<think> in replies after the last user turn)",
            QWEN,
            "<|im_end|>",
            tools="calls",
            call_open="<tool_call>",
            think=THINK,
            trims=True,
            plain=THINK,
        ),
        Template(
            "hermes2_pro_tools",
            "Hermes-2-Pro (ChatML, a tool role around <tool_response>)",
            QWEN,
            "<|im_end|>",
            tools="calls",
            call_open="<tool_call>",
            classes=(4,),
        ),
        Template(
            "llama2_inst_sys",
            "Llama 2 chat ([INST] <<SYS>>, 'reply </s>')",
            SPM,
            "</s>",
            alternating=True,
            reply_prefix=" ",
            trims=True,
            classes=(6, 7),
        ),
        Template("llama3", "Llama 3 Instruct", LLAMA3, "<|eot_id|>", trims=True, tools="results"),
        Template(
            "llama3_1_tools",
            "Llama 3.1 (ipython role, dict or string arguments)",
            LLAMA3,
            "<|eot_id|>",
            tools="calls",
            arguments="both",
            call_open='{"name"',
            call_content=False,
            max_calls=1,
            quotes_tool_results=True,
            trims=True,
            classes=(2,),
        ),
        Template(
            "llama3_2_dated",
            "Llama 3.2 (today's date from strftime_now in the system turn)",
            LLAMA3,
            "<|eot_id|>",
            trims=True,
            classes=(11,),
        ),
        Template(
            "llama3_2_clock",
            "Llama 3.2-style with strftime_now('%H:%M:%S.%f') in the system turn",
            LLAMA3,
            "<|eot_id|>",
            trims=True,
            classes=(11,),
        ),
        Template(
            "mistral_v1",
            "Mistral-7B-Instruct v0.1/v0.2 ([INST] q [/INST]reply</s>)",
            SPM,
            "</s>",
            alternating=True,
        ),
        Template(
            "mistral_v3_tools",
            "Mistral v0.3 ([TOOL_CALLS], [TOOL_RESULTS], legacy SentencePiece)",
            SPM,
            "</s>",
            special=MISTRAL_V3,
            system=False,
            alternating=True,
            tools="calls",
            call_open="[TOOL_CALLS]",
            call_content=False,
            reply_prefix=" ",
            trims=True,
            classes=(7,),
        ),
        Template(
            "mistral_v7_tekken",
            "Mistral Small v7 Tekken ([SYSTEM_PROMPT], no header on a second reply)",
            LLAMA3,
            "</s>",
            expected="partial",
            excluded="consecutive replies",
            special=("<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"),
            **LLAMA_EOS,
            classes=(8,),
        ),
        Template(
            "mixtral_8x22b",
            "Mixtral-8x22B-Instruct ([INST] and [/INST] control tokens, ' reply</s>')",
            SPM,
            "</s>",
            special=("[INST]", "[/INST]"),
            alternating=True,
            reply_prefix=" ",
            classes=(7,),
        ),
        Template(
            "gemma2",
            "Gemma 2 (<start_of_turn>model, no system role)",
            LLAMA3,
            "<end_of_turn>",
            special=GEMMA,
            system=False,
            alternating=True,
            trims=True,
        ),
        Template(
            "gemma3",
            "Gemma 3 (system folded into the first user turn)",
            LLAMA3,
            "<end_of_turn>",
            special=GEMMA,
            alternating=True,
            trims=True,
        ),
        Template(
            "phi3_mini",
            "Phi-3-mini (the user turn writes <|assistant|>, system dropped)",
            SPM,
            "<|end|>",
            expected="partial",
            excluded="consecutive replies",
            special=PHI3,
            system=False,
            classes=(7, 8),
        ),
        Template(
            "phi3_5",
            "Phi-3.5-mini (<|system|> <|user|> <|assistant|> ... <|end|>)",
            SPM,
            "<|end|>",
            special=PHI3,
            eos="<|endoftext|>",
        ),
        Template(
            "phi4",
            "Phi-4 (<|im_start|>role<|im_sep|>)",
            QWEN,
            "<|im_end|>",
            special=("<|im_sep|>",),
            tools="results",
        ),
        Template(
            "deepseek_v2",
            "DeepSeek-V2 Chat ('User: ' / 'Assistant: ' with BOS and EOS)",
            LLAMA3,
            DEEPSEEK_ENDS[1],
            special=DEEPSEEK_ENDS,
            reply_prefix=" ",
            **DEEPSEEK,
        ),
        Template(
            "deepseek_v3_tools",
            "DeepSeek V3 (<｜User｜> not special, string arguments, reply after "
            "<｜tool▁outputs▁end｜>)",
            LLAMA3,
            DEEPSEEK_ENDS[1],
            special=DEEPSEEK_ENDS,
            plain=DEEPSEEK_CHAT,
            tools="calls",
            arguments="string",
            call_open="<｜tool▁calls▁begin｜>",
            **DEEPSEEK,
            classes=(1, 2, 3),
        ),
        Template(
            "command_r",
            "Command-R (Cohere turn tokens, a ~500-token default preamble around the system)",
            LLAMA3,
            "<|END_OF_TURN_TOKEN|>",
            special=COHERE,
            bos="<BOS_TOKEN>",
            classes=(5,),
        ),
        Template(
            "command_a_tools",
            "Command-A (<|START_RESPONSE|>, plans and <|START_ACTION|> calls, results in "
            "system turns)",
            LLAMA3,
            "<|END_OF_TURN_TOKEN|>",
            special=COMMAND_A,
            bos="<BOS_TOKEN>",
            tools="calls",
            call_open="<|START_ACTION|>",
            quotes_tool_results=True,
            classes=(5,),
        ),
        Template(
            "exaone3_5",
            "EXAONE 3.5 ([|role|], a user turn ended by a newline only)",
            LLAMA3,
            "[|endofturn|]",
            special=EXAONE,
            tools="results",
        ),
        Template(
            "exaone4_tools",
            "EXAONE 4.0 ([|endofturn|], <think>, <tool_call>, [|tool|] results)",
            LLAMA3,
            "[|endofturn|]",
            special=EXAONE,
            tools="calls",
            call_open="<tool_call>",
            quotes_tool_results=True,
            think=THINK,
            trims=True,
            plain=THINK,
            classes=(4,),
        ),
        Template(
            "granite3_tools",
            "Granite 3.1 (<|start_of_role|>, dated default system, <|tool_call|>)",
            LLAMA3,
            "<|end_of_text|>",
            special=GRANITE,
            tools="calls",
            call_open="<|tool_call|>",
            classes=(11,),
        ),
        Template(
            "falcon",
            "Falcon Instruct ('User: ' / 'Falcon: ', no end of turn)",
            QWEN,
            None,
            expected="no end of turn",
            headers=("System:", "User:", "Falcon:"),
            reply_prefix=" ",
            classes=(9,),
        ),
        Template(
            "solar",
            "SOLAR Instruct ('### User:' / '### Assistant:', no end of turn)",
            SPM,
            None,
            expected="no end of turn",
            headers=("### System:", "### User:", "### Assistant:"),
            classes=(9,),
        ),
        Template(
            "chatqa",
            "Llama3-ChatQA-1.5 ('User: ' / 'Assistant: ', no end of turn)",
            LLAMA3,
            None,
            expected="no end of turn",
            headers=("System:", "User:", "Assistant:"),
            reply_prefix=" ",
            classes=(9,),
        ),
        Template(
            "amberchat",
            "AmberChat ('###Human: ' / '###Assistant: ', no end of turn)",
            SPM,
            None,
            expected="no end of turn",
            headers=("###Human:", "###Assistant:"),
            reply_prefix=" ",
            classes=(9,),
        ),
        Template(
            "llava",
            "LLaVA 1.5 ('USER: q ASSISTANT: reply ', no end of turn)",
            SPM,
            None,
            expected="no end of turn",
            headers=("USER:", "ASSISTANT:"),
            reply_prefix=" ",
            classes=(9,),
        ),
        Template(
            "metharme",
            "Metharme / Pygmalion-2 (<|user|> / <|model|> glued to the text, no end of turn)",
            SPM,
            None,
            expected="no end of turn",
            plain=("<|system|>", "<|user|>", "<|model|>"),
            headers=("<|system|>", "<|user|>", "<|model|>"),
            classes=(1, 9),
        ),
        Template(
            "alpaca",
            "Alpaca ('### Instruction:' / '### Response:', no end of turn)",
            LLAMA3,
            None,
            expected="no end of turn",
            headers=("### Instruction:", "### Response:"),
            classes=(9,),
        ),
        Template(
            "chatglm4",
            "GLM-4-9B-Chat ([gMASK]<sop><|role|>, the next <|user|> ends a reply)",
            QWEN,
            None,
            expected="no end of turn",
            special=GLM,
            tools="results",
            headers=("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
            classes=(9,),
        ),
        Template(
            "glm4_5_tools",
            "GLM-4.5 (<think>, <arg_key>/<arg_value> calls, <|observation|>, no end of turn)",
            QWEN,
            None,
            expected="no end of turn",
            special=GLM45,
            tools="calls",
            call_open="<tool_call>",
            think=THINK,
            trims=True,
            headers=("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"),
            classes=(9,),
        ),
        Template(
            "nemotron4",
            "Nemotron-4 Instruct (<extra_id_1>User, the user turn writes <extra_id_1>Assistant, "
            "no end of turn)",
            SPM,
            None,
            expected="no end of turn",
            special=("<extra_id_0>", "<extra_id_1>"),
            headers=("<extra_id_0>", "<extra_id_1>"),
            classes=(9,),
        ),
        Template(
            "kimi_k2_tools",
            "Kimi-K2 (<|im_user|>user<|im_middle|>, default system, functions.NAME:i calls)",
            QWEN,
            "<|im_end|>",
            special=KIMI,
            tools="calls",
            arguments="both",
            call_open="<|tool_calls_section_begin|>",
            classes=(2,),
        ),
        Template(
            "gpt_oss_harmony",
            "gpt-oss harmony (analysis and final channels, <|return|> after the last reply)",
            QWEN,
            ("<|end|>", "<|return|>"),
            special=HARMONY,
            think=("<|channel|>analysis<|message|>", "<|end|>"),
            reasoning_turns=True,
        ),
        Template(
            "gemma4_tools",
            "Gemma 4 (<|turn>, inline <|tool_response>response:NAME, no header for a second reply)",
            LLAMA3,
            "<turn|>",
            expected="partial",
            excluded="consecutive replies",
            special=GEMMA4 + ("<|tool>", "<tool|>", "<|channel>", "<channel|>"),
            tools="calls",
            call_open="<|tool_call>",
            inline_results=("<|tool_response>", "<tool_response|>"),
            think=("<|channel>", "<channel|>"),
            trims=True,
            classes=(8, 10),
        ),
        Template(
            "deepseek_r1",
            "DeepSeek-R1 distill (<｜User｜> not special, <think> in the last replies)",
            QWEN,
            DEEPSEEK_ENDS[1],
            special=DEEPSEEK_ENDS,
            plain=DEEPSEEK_CHAT[:2] + THINK,
            think=THINK,
            **DEEPSEEK,
            classes=(1,),
        ),
        Template(
            "internlm2",
            "InternLM2-chat (BOS and ChatML on a SentencePiece vocabulary)",
            SPM,
            "<|im_end|>",
            special=CHATML,
            tools="results",
        ),
        Template(
            "yi", "Yi-chat (ChatML, no BOS, SentencePiece)", SPM, "<|im_end|>", special=CHATML
        ),
        Template(
            "minicpm",
            "MiniCPM-2B-sft (<用户>q<AI>reply</s>, the user turn writes <AI>)",
            SPM,
            "</s>",
            expected="partial",
            excluded="consecutive replies",
            special=("<用户>", "<AI>"),
            trims=True,
            classes=(8,),
        ),
        Template(
            "jamba",
            "Jamba 1.5 (<|bom|><|role|> content<|eom|>, legacy SentencePiece)",
            SPM,
            "<|eom|>",
            special=JAMBA,
            bos="<|startoftext|>",
            trims=True,
            reply_prefix=" ",
            tools="results",
            classes=(7,),
        ),
        Template(
            "olmo2",
            "OLMo 2 Instruct (plain <|user|> / <|assistant|> tags, <|endoftext|> after replies)",
            QWEN,
            "<|endoftext|>",
            bos="<|endoftext|>",
            eos="<|endoftext|>",
            tools="results",
        ),
        Template(
            "smollm3_think",
            "SmolLM3 (metadata system turn, a <think> block in every reply)",
            LLAMA3,
            "<|im_end|>",
            special=CHATML,
            think=THINK,
            classes=(11,),
        ),
        Template(
            "aya_expanse",
            "Aya Expanse (Cohere turn tokens, no preamble)",
            LLAMA3,
            "<|END_OF_TURN_TOKEN|>",
            special=COHERE,
            bos="<BOS_TOKEN>",
        ),
        Template(
            "stablelm2_zephyr",
            "StableLM 2 Zephyr (<|role|> text tags, <|endoftext|>, byte-level)",
            QWEN,
            "<|endoftext|>",
            eos="<|endoftext|>",
        ),
        Template(
            "orca_mini",
            "orca_mini v3 ('### System:' / '### User:' / '### Assistant:', reply</s>)",
            SPM,
            "</s>",
        ),
        Template(
            "vicuna",
            "Vicuna v1.1 (' USER: ' / ' ASSISTANT: reply</s>', a default system line)",
            SPM,
            "</s>",
            reply_prefix=" ",
        ),
        Template(
            "zephyr", "Zephyr-7B-beta (<|role|> text tags, </s>)", SPM, "</s>", tools="results"
        ),
        Template(
            "openchat",
            "OpenChat 3.5 ('GPT4 Correct User: ', <|end_of_turn|>)",
            SPM,
            "<|end_of_turn|>",
            special=("<|end_of_turn|>",),
            tools="results",
            reply_prefix=" ",
        ),
        Template(
            "dolly",
            "Dolly v2 ('### Instruction:' / '### Response:', the text '### End')",
            LLAMA3,
            "### End",
            classes=(6,),
        ),
        Template(
            "gpt2_default",
            "transformers' old default template (text + EOS, no role marker)",
            SPM,
            "</s>",
            expected="refused",
            refusal="header",
        ),
        Template(
            "llama4",
            "Llama 4 (<|header_start|>role<|header_end|>, <|eot|>)",
            LLAMA3,
            "<|eot|>",
            special=("<|header_start|>", "<|header_end|>", "<|eot|>"),
            tools="results",
            trims=True,
        ),
    ]
}


@functools.cache
def load_zoo(name: str):
    """The template's tokenizer, control tokens added, template set (shared: do not modify)."""
    template = ZOO[name]
    tok = AutoTokenizer.from_pretrained(os.path.join(TOKENIZERS, template.tokenizer))
    if template.special:
        tok.add_special_tokens({"additional_special_tokens": list(template.special)})
    if template.plain:
        tok.add_tokens(list(template.plain))
    if template.bos:
        tok.bos_token = template.bos
    if template.eos:
        tok.eos_token = template.eos
    with open(template.path, encoding="utf-8") as f:
        tok.chat_template = f.read()
    return tok
