"""Synthetic training corpus for the embedded default model.

A fixed "world" of facts (people, cities, countries, jobs, pets, colours, ages) is built from WORLD_SEED and never
changes; documents about it (few-shot Q/A, reading comprehension, arithmetic, true/false/unknown judgements, chats,
JSON, lists, tool calls, essays) are sampled from a separate document seed, so held-out prompts can use another one.
Every document is plain text that starts with the bos token; chats are rendered in the model's own chat template.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

WORLD_SEED = 20240611
TRAIN_SEED = 0

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLES = ("system", "user", "assistant")
END = "<|end|>"
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"  # an assistant's reasoning sits between them
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>\n", "\n</tool_call>"
TOOL_INSTRUCTIONS = ('To call a tool, answer with <tool_call>\n{"name": <tool name>, "arguments": <arguments as JSON>}'
                     '\n</tool_call>')

QA = tuple[str, str]  # (question or statement, answer)

FEMALE_NAMES = (
    "Alice", "Clara", "Elena", "Greta", "Iris", "Karla", "Mira", "Nadia", "Paula", "Rosa",
    "Tessa", "Wanda", "Yara", "Bella", "Dora", "Fiona", "Hilda", "Julia", "Lena", "Petra",
)
MALE_NAMES = (
    "Bruno", "Daniel", "Felix", "Hugo", "Jonas", "Leon", "Oscar", "Quinn", "Simon", "Victor",
    "Zeno", "Amos", "Cyrus", "Emil", "Gideon", "Ivan", "Kenji", "Marco", "Otto", "Ralph",
)
JOBS = ("baker", "doctor", "pilot", "farmer", "teacher", "painter", "sailor", "nurse", "chef", "tailor",
        "lawyer", "engineer")
PETS = ("cat", "dog", "parrot", "rabbit", "turtle", "goat", "hamster", "owl")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "grey")
ATTRIBUTES = ("city", "country", "job", "pet", "colour", "age")
N_PEOPLE, N_CITIES, N_COUNTRIES = 24, 10, 5
AGE_RANGE = (18, 80)
ADD_MAX = 20  # operands of + and - lie in [0, ADD_MAX]
MUL_MAX = 9  # operands of x lie in [1, MUL_MAX]

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "pl",
          "st", "tr", "sh", "th")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "sk", "th")


@dataclass(frozen=True)
class Person:
    name: str
    pronoun: str  # "she" or "he"
    age: int
    city: str
    job: str
    pet: str
    colour: str


@dataclass(frozen=True)
class World:
    people: tuple[Person, ...]
    country_of: tuple[tuple[str, str], ...]  # (city, country) pairs
    outsiders: tuple[str, ...]  # names the world knows nothing about

    @property
    def cities(self) -> tuple[str, ...]:
        return tuple(city for city, _ in self.country_of)

    @property
    def countries(self) -> tuple[str, ...]:
        return tuple(sorted({country for _, country in self.country_of}))

    def country(self, city: str) -> str:
        return dict(self.country_of)[city]

    def value(self, person: Person, attribute: str) -> str:
        """The world's answer for one attribute of a person, as text."""
        if attribute == "country":
            return self.country(person.city)
        return str(getattr(person, attribute))

    def choices(self, attribute: str) -> tuple[str, ...]:
        """Every value an attribute can take (ages as strings)."""
        return {
            "city": self.cities, "country": self.countries, "job": JOBS, "pet": PETS, "colour": COLOURS,
            "age": tuple(str(a) for a in range(AGE_RANGE[0], AGE_RANGE[1] + 1)),
        }[attribute]


def invented_word(rng: random.Random, syllables: int) -> str:
    """A pronounceable made-up word such as 'Plimsk'."""
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables)).capitalize()


def invented_words(rng: random.Random, n: int, syllables: int, taken: set[str]) -> list[str]:
    """n distinct invented words that are not in taken (taken is updated)."""
    words: list[str] = []
    while len(words) < n:
        word = invented_word(rng, syllables)
        if word not in taken and 4 <= len(word) <= 9:
            taken.add(word)
            words.append(word)
    return words


@lru_cache(maxsize=1)
def build_world(seed: int = WORLD_SEED) -> World:
    """The fixed world of facts; the same for every document seed."""
    rng = random.Random(seed)
    taken = set(FEMALE_NAMES + MALE_NAMES)
    countries = invented_words(rng, N_COUNTRIES, 2, taken)
    cities = invented_words(rng, N_CITIES, 2, taken)
    country_of = tuple((city, countries[i % N_COUNTRIES]) for i, city in enumerate(cities))
    names = [(n, "she") for n in FEMALE_NAMES] + [(n, "he") for n in MALE_NAMES]
    rng.shuffle(names)
    people = tuple(
        Person(name, pronoun, rng.randint(*AGE_RANGE), rng.choice(cities), rng.choice(JOBS), rng.choice(PETS),
               rng.choice(COLOURS))
        for name, pronoun in names[:N_PEOPLE]
    )
    return World(people, country_of, tuple(n for n, _ in names[N_PEOPLE:]))


# ----------------------------------------------------------------------------- sentences and questions
QUESTIONS = {
    "city": ("Where does {n} live?", "In which city does {n} live?", "What city does {n} live in?"),
    "country": ("Which country does {n} live in?", "In which country does {n} live?"),
    "job": ("What is {n}'s job?", "What does {n} do for a living?", "What is the job of {n}?"),
    "pet": ("What pet does {n} have?", "Which animal does {n} keep as a pet?"),
    "colour": ("What is {n}'s favourite colour?", "Which colour does {n} like best?"),
    "age": ("How old is {n}?", "What is the age of {n}?"),
}
CITY_QUESTIONS = ("Which country is {c} in?", "In which country is {c}?")
UNKNOWABLE = (
    ("{n} likes {v}.", ("tea", "soup", "apples", "cheese", "rice", "bread", "honey", "plums")),
    ("{n} plays the {v}.", ("piano", "violin", "drum", "flute", "guitar", "harp")),
    ("{n} was born on a {v}.", ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")),
    ("{n} speaks {v}.", ("Greek", "Latin", "Dutch", "Polish", "Finnish", "Welsh")),
)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def statement(name: str, attribute: str, value: str) -> str:
    """A declarative sentence giving one attribute of a person."""
    return {
        "city": f"{name} lives in {value}.",
        "country": f"{name} lives in {value}.",
        "job": f"{name} works as {article(value)} {value}.",
        "pet": f"{name} has {article(value)} {value}.",
        "colour": f"{name}'s favourite colour is {value}.",
        "age": f"{name} is {value} years old.",
    }[attribute]


def question(rng: random.Random, name: str, attribute: str) -> str:
    return rng.choice(QUESTIONS[attribute]).format(n=name)


def fact_question(rng: random.Random, world: World) -> QA:
    """A question about the world with a one-word answer."""
    if rng.random() < 0.1:
        city, country = rng.choice(world.country_of)
        return rng.choice(CITY_QUESTIONS).format(c=city), country
    person = rng.choice(world.people)
    attribute = rng.choice(ATTRIBUTES)
    return question(rng, person.name, attribute), world.value(person, attribute)


def arithmetic_problem(rng: random.Random) -> tuple[str, int]:
    """A small sum, difference or product as (expression, value); results are never negative."""
    op = rng.choices(("+", "-", "x"), weights=(5, 4, 2))[0]
    if op == "x":
        a, b = rng.randint(1, MUL_MAX), rng.randint(1, MUL_MAX)
        return f"{a} x {b}", a * b
    a, b = rng.randint(0, ADD_MAX), rng.randint(0, ADD_MAX)
    if op == "-":
        a, b = max(a, b), min(a, b)
        return f"{a} - {b}", a - b
    return f"{a} + {b}", a + b


def arithmetic_question(rng: random.Random) -> QA:
    expression, value = arithmetic_problem(rng)
    return f"What is {expression}?", str(value)


def judgement(rng: random.Random, world: World) -> QA:
    """A statement about the world and its verdict: True, False or Unknown."""
    verdict = rng.choice(("True", "False", "Unknown"))
    if verdict == "Unknown":
        if rng.random() < 0.5:
            template, values = rng.choice(UNKNOWABLE)
            return template.format(n=rng.choice(world.people).name, v=rng.choice(values)), verdict
        attribute = rng.choice(ATTRIBUTES)
        return statement(rng.choice(world.outsiders), attribute, rng.choice(world.choices(attribute))), verdict
    if rng.random() < 0.1:
        city, country = rng.choice(world.country_of)
        if verdict == "False":
            country = rng.choice([c for c in world.countries if c != country])
        return f"{city} is in {country}.", verdict
    person, attribute = rng.choice(world.people), rng.choice(ATTRIBUTES)
    value = world.value(person, attribute)
    if verdict == "False":
        value = rng.choice([v for v in world.choices(attribute) if v != value])
    return statement(person.name, attribute, value), verdict


def passage(rng: random.Random, world: World, n_people: tuple[int, int] = (2, 4)) -> tuple[str, list[QA]]:
    """A short text about made-up people and questions answerable only by reading it."""
    taken = {p.name for p in world.people} | set(world.outsiders) | set(world.cities) | set(world.countries)
    names = invented_words(rng, rng.randint(*n_people), rng.choice((1, 2)), set(taken))
    places = invented_words(rng, 3, 2, taken | set(names))
    sentences: list[str] = []
    pairs: list[QA] = []
    for name in names:
        facts = {"city": rng.choice(places), "job": rng.choice(JOBS), "pet": rng.choice(PETS),
                 "colour": rng.choice(COLOURS), "age": str(rng.randint(*AGE_RANGE))}
        for attribute in rng.sample(sorted(facts), rng.randint(2, 4)):
            sentences.append(statement(name, attribute, facts[attribute]))
            pairs.append((question(rng, name, attribute), facts[attribute]))
    rng.shuffle(sentences)
    rng.shuffle(pairs)
    return " ".join(sentences), pairs


def render_qa(pairs: list[QA]) -> str:
    return "".join(f"Q: {q}\nA: {a}\n\n" for q, a in pairs)


def render_judgements(pairs: list[QA]) -> str:
    return "".join(f"Statement: {s}\nJudgement: {v}\n\n" for s, v in pairs)


Message = dict[str, object]  # an OpenAI-style chat message: role, content, optional tool_calls


def _to_json(value: object) -> str:
    """JSON as Hugging Face's chat templates write it (`tojson`: json.dumps with ensure_ascii=False)."""
    return json.dumps(value, ensure_ascii=False)


def render_tool_call(call: dict) -> str:
    """One call as `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`; string arguments as they are."""
    fn = call.get("function", call)
    args = fn["arguments"]
    return (f'{TOOL_CALL_OPEN}{{"name": {_to_json(fn["name"])}, "arguments": '
            f'{args if isinstance(args, str) else _to_json(args)}}}{TOOL_CALL_CLOSE}')


def render_chat(messages: list[Message], tools: list[dict] | None = None, *, add_generation_prompt: bool = False,
                enable_thinking: bool = False) -> str:
    """The chat template (tokenizer.CHAT_TEMPLATE) in Python: bos, then `<|role|>\\n` + content + `<|end|>\\n`
    per message; tools in a leading system turn, tool calls after the assistant's content, consecutive tool
    results as one user turn; the generation prompt opens `<think>\\n` when enable_thinking."""
    out = [BOS]
    if tools:
        system = ""
        if messages and messages[0]["role"] == "system":
            system, messages = f"{messages[0]['content']}\n\n", messages[1:]
        listed = "".join(_to_json(tool) + "\n" for tool in tools)
        out.append(f"<|system|>\n{system}# Tools\n<tools>\n{listed}</tools>\n{TOOL_INSTRUCTIONS}{END}\n")
    for i, message in enumerate(messages):
        content = message.get("content")
        if message["role"] == "tool":
            first = i == 0 or messages[i - 1]["role"] != "tool"
            last = i == len(messages) - 1 or messages[i + 1]["role"] != "tool"
            out.append(("<|user|>\n" if first else "\n") + f"<tool_response>\n{content}\n</tool_response>"
                       + (f"{END}\n" if last else ""))
        elif message["role"] == "assistant" and message.get("tool_calls"):
            head = f"{content}\n" if content else ""
            calls = "\n".join(render_tool_call(call) for call in message["tool_calls"])  # type: ignore[union-attr]
            out.append(f"<|assistant|>\n{head}{calls}{END}\n")
        else:
            out.append(f"<|{message['role']}|>\n{content if isinstance(content, str) else ''}{END}\n")
    if add_generation_prompt:
        out.append("<|assistant|>\n" + (THINK_OPEN if enable_thinking else ""))
    return "".join(out)


# ----------------------------------------------------------------------------- documents
def doc_fact_qa(rng: random.Random, world: World) -> str:
    n = rng.randint(2, 12) if rng.random() < 0.9 else rng.randint(30, 80)
    return render_qa([fact_question(rng, world) for _ in range(n)])


def doc_arithmetic(rng: random.Random, world: World) -> str:
    if rng.random() < 0.3:
        return "".join(f"{e} = {v}\n" for e, v in (arithmetic_problem(rng) for _ in range(rng.randint(5, 20))))
    return render_qa([arithmetic_question(rng) for _ in range(rng.randint(2, 12))])


def doc_mixed_qa(rng: random.Random, world: World) -> str:
    makers = (lambda: fact_question(rng, world), lambda: arithmetic_question(rng))
    return render_qa([rng.choice(makers)() for _ in range(rng.randint(3, 12))])


def doc_judgements(rng: random.Random, world: World) -> str:
    header = "Decide whether each statement is True, False or Unknown.\n\n" if rng.random() < 0.3 else ""
    return header + render_judgements([judgement(rng, world) for _ in range(rng.randint(2, 10))])


def doc_reading(rng: random.Random, world: World) -> str:
    text, pairs = passage(rng, world, (1, 4) if rng.random() < 0.9 else (10, 20))
    return f"Text: {text}\n\n" + render_qa(pairs[: rng.randint(1, 5)])


def doc_copy(rng: random.Random, world: World) -> str:
    """A list of made-up words and numbers, then the same list again (teaches copying from context)."""
    words = [invented_word(rng, rng.randint(1, 2)) if rng.random() < 0.7 else str(rng.randint(0, 99))
             for _ in range(rng.randint(3, 25))]
    text = " ".join(words)
    return rng.choice(("Repeat after me: ", "Copy this: ", "Say it again: ")) + f"{text}\n{text}\n"


def doc_lookup(rng: random.Random, world: World) -> str:
    """Made-up codes in a table, then questions that look them up."""
    keys = invented_words(rng, rng.randint(2, 8), rng.randint(1, 2), set())
    codes = {k: str(rng.randint(0, 99)) for k in keys}
    table = ", ".join(f"{k} {v}" for k, v in codes.items())
    queries = [rng.choice(keys) for _ in range(rng.randint(1, 4))]
    return f"Codes: {table}.\n\n" + render_qa([(f"What is the code of {k}?", codes[k]) for k in queries])


def biography(rng: random.Random, world: World, person: Person) -> str:
    """A few sentences stating every fact about one person."""
    p, poss = person.pronoun.capitalize(), "her" if person.pronoun == "she" else "his"
    country = world.country(person.city)
    return rng.choice((
        f"{person.name} is {person.age} years old and lives in {person.city}, a city in {country}. "
        f"{p} works as {article(person.job)} {person.job} and has {article(person.pet)} {person.pet}. "
        f"{poss.capitalize()} favourite colour is {person.colour}.",
        f"{person.name} lives in {person.city}. {p} is {article(person.job)} {person.job}. "
        f"{p} is {person.age} years old. {p} keeps {article(person.pet)} {person.pet} as a pet and likes "
        f"the colour {person.colour} best. {person.city} is in {country}.",
        f"Meet {person.name}, {article(person.job)} {person.job} from {person.city} in {country}. "
        f"{person.name} is {person.age}, has {article(person.pet)} {person.pet}, and loves the colour "
        f"{person.colour}.",
    ))


def doc_biographies(rng: random.Random, world: World) -> str:
    people = rng.sample(world.people, rng.randint(1, 4) if rng.random() < 0.9 else len(world.people))
    return "\n\n".join(biography(rng, world, p) for p in people) + "\n"


def doc_directory(rng: random.Random, world: World) -> str:
    """A long listing of everyone followed by questions about it (retrieval over a long context)."""
    people = rng.sample(world.people, len(world.people))
    lines = [f"{p.name}: {p.age}, {p.job}, lives in {p.city} ({world.country(p.city)}), has {article(p.pet)} "
             f"{p.pet}, likes {p.colour}." for p in people]
    return "Directory of the valley:\n" + "\n".join(lines) + "\n\n" + render_qa(
        [fact_question(rng, world) for _ in range(rng.randint(3, 8))])


def full_record(world: World, person: Person) -> dict[str, object]:
    """Everything the world knows about a person, JSON-ready, in a fixed field order."""
    return {"name": person.name, "age": person.age, "city": person.city, "country": world.country(person.city),
            "job": person.job, "pet": person.pet, "colour": person.colour}


def person_record(rng: random.Random, world: World, person: Person) -> dict[str, object]:
    """A JSON-ready record with the name and a random subset of fields, in a fixed field order."""
    fields = full_record(world, person)
    keep = set(rng.sample([k for k in fields if k != "name"], rng.randint(2, 6))) | {"name"}
    return {k: v for k, v in fields.items() if k in keep}


def doc_json(rng: random.Random, world: World) -> str:
    kind = rng.random()
    if kind < 0.5:
        person = rng.choice(world.people)
        intro = rng.choice((f"Record for {person.name}:\n", f"Describe {person.name} as JSON.\n", ""))
        return intro + json.dumps(person_record(rng, world, person)) + "\n"
    if kind < 0.8:
        people = rng.sample(world.people, rng.randint(2, 4))
        return "People as JSON:\n" + json.dumps([person_record(rng, world, p) for p in people]) + "\n"
    city = rng.choice(world.cities)
    residents = [p.name for p in world.people if p.city == city]
    return json.dumps({"city": city, "country": world.country(city), "residents": residents}) + "\n"


TIPS = {
    "sleeping well": ("Go to bed at the same time every night.", "Keep your room dark and quiet.",
                      "Avoid coffee in the evening.", "Put your phone away before bed."),
    "learning a language": ("Practice a little every day.", "Read simple books.", "Talk with native speakers.",
                            "Write down new words."),
    "staying healthy": ("Eat fresh fruit and vegetables.", "Walk for thirty minutes a day.",
                        "Drink enough water.", "Sleep at least seven hours."),
    "saving money": ("Make a budget.", "Cook at home.", "Buy only what you need.",
                     "Put some money aside each month."),
    "writing an essay": ("Start with a clear plan.", "Give one idea per paragraph.", "Use simple words.",
                         "Read it again before you finish."),
    "keeping a pet": ("Feed it at regular times.", "Give it clean water.", "Play with it every day.",
                      "Take it to a doctor when it is sick."),
}


def doc_lists(rng: random.Random, world: World) -> str:
    if rng.random() < 0.5:
        goal = rng.choice(sorted(TIPS))
        tips = rng.sample(TIPS[goal], 3)
        return f"Here are three tips for {goal}:\n" + "".join(f"{i}. {t}\n" for i, t in enumerate(tips, 1))
    attribute = rng.choice(("city", "job", "pet", "colour"))
    value = world.value(rng.choice(world.people), attribute)
    title = {"city": f"People who live in {value}", "job": f"People who work as {value}s",
             "pet": f"People who have {article(value)} {value}", "colour": f"People whose favourite colour is {value}"}
    names = [p.name for p in world.people if world.value(p, attribute) == value]
    return f"{title[attribute]}:\n" + "".join(f"- {n}\n" for n in names)


def doc_steps(rng: random.Random, world: World) -> str:
    """Short step-by-step answers ending in 'The answer is X.'"""
    if rng.random() < 0.5:
        person, years = rng.choice(world.people), rng.randint(1, 9)
        return (f"Q: {person.name} is {person.age} years old. How old will {person.pronoun} be in {years} years?\n"
                f"A: Let's think step by step. {person.name} is {person.age} years old. {person.age} + {years} = "
                f"{person.age + years}. The answer is {person.age + years}.\n")
    a, b, c = rng.randint(1, 20), rng.randint(1, 20), rng.randint(0, 10)
    first = a + b
    return (f"Q: What is {a} + {b} - {c}?\nA: Let's think step by step. First, {a} + {b} = {first}. "
            f"Then, {first} - {c} = {first - c}. The answer is {first - c}.\n")


def doc_tools(rng: random.Random, world: World) -> str:
    """ReAct-style traces with a calculator and a lookup tool."""
    if rng.random() < 0.5:
        expression, value = arithmetic_problem(rng)
        return (f"Question: What is {expression}?\nThought: I should use the calculator.\n"
                f"Action: calculator[{expression}]\nObservation: {value}\nThought: I know the answer.\n"
                f"Answer: {value}\n")
    person, attribute = rng.choice(world.people), rng.choice(ATTRIBUTES)
    answer = world.value(person, attribute)
    return (f"Question: {question(rng, person.name, attribute)}\nThought: I should look up {person.name}.\n"
            f"Action: lookup[{person.name}]\nObservation: {biography(rng, world, person)}\n"
            f"Thought: {statement(person.name, attribute, answer)}\nAnswer: {answer}\n")


ESSAY_TOPICS = {
    "reading books": ("it teaches us about other lives", "it makes us calm", "it builds a rich vocabulary"),
    "walking in the park": ("fresh air is good for the body", "it clears the mind", "it is free for everyone"),
    "learning to cook": ("home food is healthy", "it saves money", "it is a joy to share a meal"),
    "living in a big city": ("there is always something to do", "there are many jobs", "it is full of people"),
    "keeping a pet": ("a pet is a loyal friend", "it teaches care and patience", "it makes a home warm"),
    "playing music": ("it brings people together", "it trains the memory", "it expresses feelings"),
    "travelling by train": ("it is kind to the planet", "you can read on the way", "the views are beautiful"),
    "growing a garden": ("it gives fresh vegetables", "it is quiet work", "it teaches patience"),
}
ADJECTIVES = ("important", "valuable", "wonderful", "worthwhile", "useful")


def essay(rng: random.Random) -> str:
    """A short opinion paragraph in plain English."""
    topic = rng.choice(sorted(ESSAY_TOPICS))
    adjective = rng.choice(ADJECTIVES)
    reasons = rng.sample(ESSAY_TOPICS[topic], 3)
    opener = rng.choice((f"I think {topic} is {adjective}.", f"In my opinion, {topic} is {adjective}.",
                         f"Many people believe that {topic} is {adjective}."))
    body = f" First, {reasons[0]}. Also, {reasons[1]}. Finally, {reasons[2]}."
    closer = rng.choice((f" That is why {topic} matters to me.", f" For these reasons, {topic} is {adjective}.",
                         " Not everyone agrees, but the reasons are strong."))
    return opener + body + closer


def doc_essay(rng: random.Random, world: World) -> str:
    return rng.choice(("", "Essay: ", "Opinion: ")) + essay(rng) + "\n"


SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a helpful assistant who knows everyone in the valley.",
                  "Answer briefly.")
SMALL_TALK = (("Hello!", "Hello! How can I help you today?"), ("Hi there.", "Hi! What would you like to know?"),
              ("Thank you!", "You are welcome!"), ("Who are you?", "I am a small assistant for the sglbench workbench."))


def chat_turn(rng: random.Random, world: World, last: tuple[Person, str] | None
              ) -> tuple[str, str, tuple[Person, str] | None]:
    """One (user, assistant) exchange; the state lets a follow-up ask the same thing about someone else."""
    kind = rng.random()
    if last is not None and kind < 0.25:
        person, attribute = rng.choice(world.people), last[1]
        reply = statement(person.name, attribute, world.value(person, attribute))
        return f"What about {person.name}?", reply, (person, attribute)
    if kind < 0.55:
        person, attribute = rng.choice(world.people), rng.choice(ATTRIBUTES)
        reply = statement(person.name, attribute, world.value(person, attribute))
        return question(rng, person.name, attribute), reply, (person, attribute)
    if kind < 0.7:
        expression, value = arithmetic_problem(rng)
        return f"What is {expression}?", f"{expression} = {value}.", None
    if kind < 0.82:
        text, verdict = judgement(rng, world)
        reply = {"True": "Yes, that is true.", "False": "No, that is false.", "Unknown": "I do not know that."}
        return f"Is it true that {text[:-1]}?", reply[verdict], None
    if kind < 0.9:
        person = rng.choice(world.people)
        return f"Give me {person.name}'s record as JSON.", json.dumps(person_record(rng, world, person)), None
    user, reply = rng.choice(SMALL_TALK)
    return user, reply, None


def doc_chat(rng: random.Random, world: World) -> str:
    if rng.random() < 0.15:
        dimension = rng.choice(("clarity", "originality", "evidence"))
        score = rng.randint(3, 9)
        verdict = "strong" if score >= 6 else "weak"
        return render_chat([
            {"role": "system", "content": "You are a strict grader."},
            {"role": "user", "content": f"Judge the {dimension} of: {essay(rng)}"},
            {"role": "assistant", "content": f"The {dimension} is {verdict}. Score: {score}/10."},
        ])
    messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.7 else []
    state = None
    for _ in range(rng.randint(1, 3)):
        user, reply, state = chat_turn(rng, world, state)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return render_chat(messages)


# ----------------------------------------------------------------------------- tool-use and thinking chats
def function_tool(name: str, description: str, parameters: dict[str, str]) -> dict:
    """An OpenAI tool definition whose parameters (name -> short description) are required strings."""
    properties = {p: {"type": "string", "description": d} for p, d in parameters.items()}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": list(parameters)}}}


# The tools of the tool-use chats: the first three are called (see run_tool), the others are only offered.
TOOLS: dict[str, dict] = {tool["function"]["name"]: tool for tool in (
    function_tool("calculator", "Evaluate an arithmetic expression with +, - and *.",
                  {"expression": "the expression, such as 12 * 7"}),
    function_tool("lookup_person", "Look up a person of the valley and return their record as JSON.",
                  {"name": "the person's name"}),
    function_tool("get_weather", "Get today's weather in a city.", {"city": "the name of the city"}),
    function_tool("send_message", "Send a text message to someone.",
                  {"to": "the recipient's name", "text": "the message"}),
    function_tool("get_time", "Get the current time in a city.", {"city": "the name of the city"}),
    function_tool("search_web", "Search the web and return the top result.", {"query": "what to search for"}),
    function_tool("set_reminder", "Set a reminder for later.",
                  {"text": "what to remember", "time": "when, such as 18:30"}),
    function_tool("translate", "Translate a text into another language.",
                  {"text": "the text", "language": "the language"}),
)}
CALLED_TOOLS = ("calculator", "lookup_person", "get_weather")
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "snowy", "foggy")
TEMPERATURE_RANGE = (0, 35)


def calculate(expression: str) -> str:
    """The calculator tool: `a + b`, `a - b` or `a * b` (also `a x b`) of integers; "error" for anything else."""
    try:
        a, op, b = expression.split()
        return str({"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "x": int(a) * int(b)}[op])
    except (ValueError, KeyError):
        return "error"


def weather(city: str, day: int) -> dict[str, object]:
    """The get_weather tool's report: invented, but the same for the same city and day."""
    rng = random.Random(f"{city}/{day}")
    return {"city": city, "condition": rng.choice(CONDITIONS), "temperature": rng.randint(*TEMPERATURE_RANGE)}


def lookup_person(world: World, name: str) -> dict[str, object]:
    """The lookup_person tool: the person's full record, or an error for a name the world does not know."""
    person = next((p for p in world.people if p.name == name.strip()), None)
    return {"error": f"no person named {name}"} if person is None else full_record(world, person)


def run_tool(name: str, arguments: dict[str, str], day: int = 0, world: World | None = None) -> str:
    """A called tool's result as the text of a tool message (JSON for lookups and weather); day picks the weather."""
    if name == "calculator":
        return calculate(arguments["expression"])
    if name == "lookup_person":
        return _to_json(lookup_person(world or build_world(), arguments["name"]))
    if name == "get_weather":
        return _to_json(weather(arguments["city"], day))
    raise ValueError(f"no such tool: {name}")


@dataclass(frozen=True)
class ToolExchange:
    """A user question answered through tool calls: the calls, their results, the final answer, and the texts
    any right answer contains (for held-out scoring)."""
    question: str
    calls: tuple[tuple[str, dict[str, str]], ...]  # (tool name, arguments)
    results: tuple[str, ...]
    answer: str
    keys: tuple[str, ...]

    def messages(self) -> list[Message]:
        """user, assistant tool calls, one tool message per result, the assistant's answer."""
        calls = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in self.calls]
        return [{"role": "user", "content": self.question},
                {"role": "assistant", "content": "", "tool_calls": calls},
                *({"role": "tool", "content": r} for r in self.results),
                {"role": "assistant", "content": self.answer}]


CALC_QUESTIONS = ("What is {e}?", "Compute {e}.", "Please calculate {e}.", "How much is {e}?")
WEATHER_QUESTIONS = ("What is the weather in {c}?", "How is the weather in {c} today?",
                     "What's the weather like in {c}?", "Tell me the weather in {c}.")
PAIR_QUESTIONS = {
    "city": "Where do {a} and {b} live?", "country": "Which countries do {a} and {b} live in?",
    "job": "What are the jobs of {a} and {b}?", "pet": "What pets do {a} and {b} have?",
    "colour": "What are the favourite colours of {a} and {b}?", "age": "How old are {a} and {b}?",
}


def calculation(rng: random.Random) -> tuple[str, str]:
    """(expression as the user writes it, the calculator's expression): small sums of the arithmetic documents
    or larger two-digit ones only the tool gets right; `x` or `*` for products, always `*` in the call."""
    if rng.random() < 0.5:
        a, op, b = arithmetic_problem(rng)[0].split()
    else:
        op = rng.choice("+-*")
        a, b = str(rng.randint(10, 99)), str(rng.randint(2 if op == "*" else 10, 99))
        if op == "-" and int(a) < int(b):
            a, b = b, a
    call = f"{a} {'*' if op in 'x*' else op} {b}"
    return (call.replace("*", "x") if rng.random() < 0.3 else call), call


def weather_city(rng: random.Random, world: World) -> str:
    """Mostly a city of the world, sometimes an invented one (the model must copy its name into the call)."""
    return rng.choice(world.cities) if rng.random() < 0.7 else invented_word(rng, 2)


def weather_sentence(report: dict[str, object]) -> str:
    return f"It is {report['condition']} and {report['temperature']} degrees in {report['city']}."


def tool_exchange(rng: random.Random, world: World, day: int, parallel: bool | None = None) -> ToolExchange:
    """One question that needs a tool (calculator, lookup_person or get_weather), sometimes two calls at once."""
    parallel = rng.random() < 0.12 if parallel is None else parallel
    tool = rng.choices(CALLED_TOOLS, weights=(35, 35, 30))[0]
    if tool == "calculator":
        pairs = [calculation(rng) for _ in range(2 if parallel else 1)]
        values = [calculate(call) for _, call in pairs]
        shown = " and what is ".join(q for q, _ in pairs)
        question_text = f"What is {shown}?" if parallel else rng.choice(CALC_QUESTIONS).format(e=shown)
        sums = [f"{call} = {v}" for (_, call), v in zip(pairs, values)]
        keys = tuple(f"{text}{' and' if i < len(sums) - 1 else '.'}" for i, text in enumerate(sums))
        return ToolExchange(question_text, tuple((tool, {"expression": call}) for _, call in pairs), tuple(values),
                            " and ".join(sums) + ".", keys)
    if tool == "lookup_person":
        attribute = rng.choice(ATTRIBUTES)
        if parallel:
            people = rng.sample(world.people, 2)
            question_text = PAIR_QUESTIONS[attribute].format(a=people[0].name, b=people[1].name)
        elif rng.random() < 0.1:
            name = rng.choice(world.outsiders)
            return ToolExchange(question(rng, name, attribute), ((tool, {"name": name}),),
                                (run_tool(tool, {"name": name}, world=world),), f"I could not find {name}.", (name,))
        else:
            people = [rng.choice(world.people)]
            question_text = question(rng, people[0].name, attribute)
        values = [world.value(p, attribute) for p in people]
        return ToolExchange(
            question_text, tuple((tool, {"name": p.name}) for p in people),
            tuple(run_tool(tool, {"name": p.name}, world=world) for p in people),
            " ".join(statement(p.name, attribute, v) for p, v in zip(people, values)), tuple(values))
    cities = [weather_city(rng, world)]
    if parallel:
        cities.append(rng.choice([c for c in world.cities if c != cities[0]]))
    reports = [weather(c, day) for c in cities]
    question_text = (f"What is the weather in {cities[0]} and {cities[1]}?" if parallel
                     else rng.choice(WEATHER_QUESTIONS).format(c=cities[0]))
    return ToolExchange(question_text, tuple((tool, {"city": c}) for c in cities),
                        tuple(_to_json(r) for r in reports), " ".join(weather_sentence(r) for r in reports),
                        tuple(k for r in reports for k in (str(r["condition"]), f"{r['temperature']} degrees")))


def offered_tools(rng: random.Random, needed: set[str]) -> list[dict]:
    """The needed tools plus a few others, in random order (one to three in all)."""
    others = [name for name in TOOLS if name not in needed]
    names = [*sorted(needed), *rng.sample(others, rng.randint(max(0, 1 - len(needed)), max(0, 3 - len(needed))))]
    rng.shuffle(names)
    return [TOOLS[name] for name in names]


TOOL_SYSTEM_PROMPTS = (*SYSTEM_PROMPTS, "You are a helpful assistant with tools.")


def tool_chat(rng: random.Random, world: World) -> tuple[list[Message], list[dict]]:
    """(messages, tools) of a chat with tools offered: questions answered through tool calls and their results,
    sometimes two calls in one turn, sometimes small talk answered directly; one to three user turns."""
    messages: list[Message] = [{"role": "system", "content": rng.choice(TOOL_SYSTEM_PROMPTS)}] if rng.random() < 0.5 \
        else []
    day, needed = rng.randrange(100_000), set()
    for _ in range(rng.choices((1, 2, 3), weights=(4, 4, 2))[0]):
        if rng.random() < 0.2:
            user, reply = rng.choice(SMALL_TALK)
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        else:
            exchange = tool_exchange(rng, world, day)
            needed |= {name for name, _ in exchange.calls}
            messages += exchange.messages()
    return messages, offered_tools(rng, needed)


def doc_tool_chat(rng: random.Random, world: World) -> str:
    return render_chat(*tool_chat(rng, world))


@dataclass(frozen=True)
class Reasoned:
    """A question with a short reasoning trace, the plain chat's answer, and a text any right answer contains."""
    question: str
    trace: str
    answer: str
    key: str


ATTRIBUTE_LABELS = {"city": "city", "country": "country", "job": "job", "pet": "pet", "colour": "favourite colour",
                    "age": "age"}
VERDICT_REPLIES = {"True": "Yes, that is true.", "False": "No, that is false.", "Unknown": "I do not know that."}
VERDICT_KEYS = {"True": "true", "False": "false", "Unknown": "do not know"}


def known_fact(world: World, person: Person, attribute: str) -> str:
    """What the world says about a person's attribute, as the reasoning states it (countries via the city)."""
    if attribute == "country":
        return f"{person.name} lives in {person.city}, and {person.city} is in {world.country(person.city)}."
    return statement(person.name, attribute, world.value(person, attribute))


def reasoned_fact(rng: random.Random, world: World) -> Reasoned:
    if rng.random() < 0.1:
        city, country = rng.choice(world.country_of)
        return Reasoned(rng.choice(CITY_QUESTIONS).format(c=city),
                        f"The question is about where {city} is. {city} is in {country}.", f"{city} is in {country}.",
                        country)
    person, attribute = rng.choice(world.people), rng.choice(ATTRIBUTES)
    value = world.value(person, attribute)
    return Reasoned(question(rng, person.name, attribute),
                    f"The question is about {person.name}'s {ATTRIBUTE_LABELS[attribute]}. "
                    f"{known_fact(world, person, attribute)}", statement(person.name, attribute, value), value)


def reasoned_judgement(rng: random.Random, world: World) -> Reasoned:
    verdict = rng.choice(("True", "False", "Unknown"))
    if verdict == "Unknown":
        if rng.random() < 0.5:
            template, values = rng.choice(UNKNOWABLE)
            name = rng.choice(world.people).name
            text, trace = template.format(n=name, v=rng.choice(values)), f"I know {name}, but nothing about that."
        else:
            name, attribute = rng.choice(world.outsiders), rng.choice(ATTRIBUTES)
            text = statement(name, attribute, rng.choice(world.choices(attribute)))
            trace = f"I know nothing about {name}."
    else:
        person, attribute = rng.choice(world.people), rng.choice(ATTRIBUTES)
        value = world.value(person, attribute)
        if verdict == "False":
            value = rng.choice([v for v in world.choices(attribute) if v != value])
        text = statement(person.name, attribute, value)
        match = "That matches the statement." if verdict == "True" else "That does not match the statement."
        trace = f"I check what I know about {person.name}. {known_fact(world, person, attribute)} {match}"
    return Reasoned(f"Is it true that {text[:-1]}?", trace, VERDICT_REPLIES[verdict], VERDICT_KEYS[verdict])


def reasoned_question(rng: random.Random, world: World) -> Reasoned:
    """Arithmetic, a fact or a judgement, with the reasoning that leads to the plain chat's answer."""
    kind = rng.random()
    if kind < 0.35:
        expression, value = arithmetic_problem(rng)
        return Reasoned(f"What is {expression}?", f"I need {expression}. {expression} = {value}.",
                        f"{expression} = {value}.", f"= {value}.")
    return reasoned_fact(rng, world) if kind < 0.7 else reasoned_judgement(rng, world)


def thinking_reply(reasoned: Reasoned) -> str:
    """The assistant's content in thinking mode: the trace inside <think>, then the answer."""
    return f"{THINK_OPEN}{reasoned.trace}{THINK_CLOSE}{reasoned.answer}"


def thinking_chat(rng: random.Random, world: World) -> list[Message]:
    """A chat whose last assistant turn reasons first (the generation prompt opened `<think>\n`)."""
    messages: list[Message] = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.5 \
        else []
    if rng.random() < 0.3:
        user, reply, _ = chat_turn(rng, world, None)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    reasoned = reasoned_question(rng, world)
    messages += [{"role": "user", "content": reasoned.question},
                 {"role": "assistant", "content": thinking_reply(reasoned)}]
    return messages


def doc_thinking(rng: random.Random, world: World) -> str:
    return render_chat(thinking_chat(rng, world))


Mixture = tuple[tuple[Callable[[random.Random, World], str], float], ...]

# The main mixture: every kind of text the workbench demonstrates.
DOCUMENT_KINDS: Mixture = (
    (doc_fact_qa, 8), (doc_arithmetic, 26), (doc_mixed_qa, 4), (doc_judgements, 22), (doc_reading, 10),
    (doc_copy, 6), (doc_lookup, 6), (doc_biographies, 4), (doc_directory, 1), (doc_json, 5), (doc_lists, 3),
    (doc_steps, 3), (doc_tools, 4), (doc_essay, 3), (doc_chat, 10), (doc_tool_chat, 3), (doc_thinking, 6),
)
# The cool-down mixture: weighted towards the held-out tasks (arithmetic, judgements, Q/A), the rest kept
# present so that nothing is forgotten while the learning rate decays.
ANNEAL_KINDS: Mixture = (
    (doc_fact_qa, 8), (doc_arithmetic, 40), (doc_mixed_qa, 6), (doc_judgements, 34), (doc_reading, 6),
    (doc_copy, 2), (doc_lookup, 3), (doc_biographies, 3), (doc_directory, 1), (doc_json, 3), (doc_lists, 1),
    (doc_steps, 2), (doc_tools, 3), (doc_essay, 1), (doc_chat, 7), (doc_tool_chat, 3), (doc_thinking, 6),
)
# Fine-tuning a trained checkpoint on the tool-call and thinking formats (train.py --init-from): the cool-down
# mixture with tool-use chats (about 40 % of the tokens), thinking chats, plain chats and the ReAct traces
# weighted up, so that the older chat and tool formats are rehearsed while the new ones are learnt.
_FINETUNE_WEIGHTS = {doc_chat: 30, doc_tools: 10, doc_tool_chat: 20, doc_thinking: 30}
FINETUNE_KINDS: Mixture = tuple((maker, _FINETUNE_WEIGHTS.get(maker, weight)) for maker, weight in ANNEAL_KINDS)


def sample_document(rng: random.Random, world: World, kinds: Mixture = DOCUMENT_KINDS) -> str:
    """One document, starting with the bos token (chats already carry it through the template)."""
    makers, weights = zip(*kinds)
    text = rng.choices(makers, weights=weights)[0](rng, world)
    return text if text.startswith(BOS) else BOS + text


def iter_documents(seed: int = TRAIN_SEED, kinds: Mixture = DOCUMENT_KINDS) -> Iterator[str]:
    """An endless, deterministic stream of documents for one seed and mixture."""
    rng, world = random.Random(seed), build_world()
    while True:
        yield sample_document(rng, world, kinds)


def generate_documents(seed: int, n: int) -> list[str]:
    stream = iter_documents(seed)
    return [next(stream) for _ in range(n)]
