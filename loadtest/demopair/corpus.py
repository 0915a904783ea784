"""A generated, seeded banking-intent corpus whose structure makes a teacher/student comparison informative.

Real data would need a hub download; a generated corpus keeps the demo offline and lets us *plant* the
effects a distillation review must catch, so the quality report has something true to find:

- eight intents, one of them rare (``card_compromised``, 2.5 % by default);
- long-tailed lengths (lognormal number of context clauses around the intent cue, 5 to 200 tokens);
- ~10 % *hard* examples that also mention a second intent, framed as past and resolved
  ("last month I wrote that I lost my card, that is sorted now"); the label is the present intent;
- the rare class is second order: it has no words of its own. It is a *lost card* cue together with an
  *unrecognised payment* cue (each alone is ``card_lost`` / ``dispute_charge``), both in the present, often
  far apart. Its near-twins are the hard ``card_lost``/``dispute_charge`` examples that pair the same two cues
  with one of them in the past ("... a few weeks ago"), so only tense binds the cues into the rare intent.
  This conjunction is the last thing a model learns: a student with less capacity and fewer steps gets the
  single cues right but the rare intent wrong more often than its teacher, so the rare slice drops more than
  the aggregate (measured figures in the build's pair.json).
- a ``segment`` column (the customer segment: ``retail``, ``small_business``, ``premier``), the group column of
  the fairness review (``loadtest eval --group-column segment``). It is drawn from its own random stream after
  the texts (the texts do not depend on it, and no model sees it) but, as a segment's writing habits would,
  it leans on the text: premier customers write long messages and small businesses more of the hard,
  two-intent ones, so a student weaker on long and hard texts is weaker on those segments too.

The evaluation split is drawn from its own random stream with its own ids; a train text that equals an
evaluation text is redrawn unless it is very short (terse requests such as "Card lost." recur in real logs too),
so the frozen evaluation examples are not seen in training.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported lazily so importing the package stays cheap
    import pandas as pd

LABELS: tuple[str, ...] = (
    "balance_inquiry",
    "transfer_money",
    "card_lost",
    "dispute_charge",
    "exchange_rate",
    "change_pin",
    "loan_inquiry",
    "card_compromised",
)
RARE_LABEL = "card_compromised"

# Relative frequency of the common intents (normalised over what the rare share leaves).
_COMMON_WEIGHTS: dict[str, float] = {
    "balance_inquiry": 0.19,
    "transfer_money": 0.17,
    "card_lost": 0.15,
    "dispute_charge": 0.15,
    "exchange_rate": 0.12,
    "change_pin": 0.11,
    "loan_inquiry": 0.11,
}

# (low, high, name): token counts, [CLS] and [SEP] included.
LENGTH_BUCKETS: tuple[tuple[int, int, str], ...] = (
    (5, 15, "5-15"),
    (16, 40, "16-40"),
    (41, 100, "41-100"),
    (101, 200, "101-200"),
)
MIN_TOKENS = 5
MAX_TOKENS = 200
SPECIAL_TOKENS_PER_TEXT = 2  # [CLS] ... [SEP]

COLUMNS = ("id", "text", "label", "label_id", "length_bucket", "rare_class", "hard", "segment", "n_tokens")
SEGMENTS: tuple[str, ...] = ("retail", "small_business", "premier")
_LONG_PRETOKENS = 40  # a "long" message for the segment draw
# segment weights (retail, small_business, premier) by kind of message
_SEGMENT_WEIGHTS = {"hard": (0.3, 0.5, 0.2), "long": (0.25, 0.2, 0.55), "other": (0.65, 0.2, 0.15)}

# ---------------------------------------------------------------------------------------------------------
# Vocabulary of the slots.
_SLOTS: dict[str, tuple[str, ...]] = {
    "card": ("card", "debit card", "credit card", "bank card", "visa card", "mastercard", "contactless card",
             "travel card", "business card", "new card"),
    "account": ("account", "current account", "savings account", "joint account", "business account",
                "student account", "checking account", "main account"),
    "amount": ("20 pounds", "50 pounds", "100 euros", "250 dollars", "500 pounds", "1000 euros",
               "a few hundred pounds", "fifty quid", "two thousand euros", "300 dollars", "the deposit",
               "the rent money"),
    "person": ("my landlord", "my sister", "my brother", "a friend", "my mum", "my dad", "my son", "my daughter",
               "my flatmate", "a colleague", "my builder", "my accountant", "the school", "my partner",
               "my cousin", "a supplier", "my grandmother", "the garage"),
    "merchant": ("amazon", "netflix", "uber", "spotify", "a hotel in lisbon", "the supermarket", "an online shop",
                 "a petrol station", "a restaurant", "ebay", "a gym", "an airline", "a parking app",
                 "a phone company", "a betting site", "a furniture store", "a taxi firm", "a pharmacy",
                 "a bookshop", "a coffee shop", "a cinema chain", "a car rental firm", "a music festival",
                 "a dating app", "an electronics store", "a garden centre", "a bakery", "a clothing website",
                 "a streaming service", "a travel agent"),
    "currency": ("euros", "dollars", "us dollars", "yen", "swiss francs", "pounds", "canadian dollars",
                 "australian dollars", "pesos", "rupees", "turkish lira", "danish krone"),
    "place": ("the pub", "the gym", "a taxi", "the train", "work", "the airport", "a restaurant", "the cinema",
              "a friend's house", "the bus", "the beach", "a hotel", "the office", "the library"),
    "name": ("anna", "ben", "carlos", "diana", "emeka", "fatima", "george", "hannah", "ivan", "julia", "kenji",
             "laura", "mohammed", "nina", "oliver", "priya", "quentin", "rosa", "samuel", "tara", "umar",
             "victoria", "william", "xiao", "yusuf", "zoe", "martin", "elena", "tom", "sofia", "aisha", "bruno",
             "chloe", "dmitri", "esther", "felix", "grace", "hugo", "ines", "jamal", "katarzyna", "leo", "maya",
             "niall", "olga", "pablo", "rania", "stefan", "tomasz", "ursula", "vikram", "wendy", "yara", "zainab",
             "aleksander", "bridget", "ciaran", "deepa", "eamon", "farah"),
    "city": ("london", "manchester", "leeds", "glasgow", "bristol", "cardiff", "belfast", "dublin", "paris",
             "berlin", "madrid", "rome", "lisbon", "amsterdam", "brussels", "vienna", "prague", "warsaw", "oslo",
             "stockholm", "leicester", "york", "bath", "oxford", "cambridge", "liverpool", "newcastle",
             "sheffield", "nottingham", "brighton", "aberdeen", "dundee", "swansea", "exeter", "norwich",
             "munich", "hamburg", "milan", "naples", "seville", "valencia", "porto", "lyon", "marseille",
             "copenhagen", "helsinki", "budapest"),
    "country": ("spain", "france", "italy", "portugal", "greece", "germany", "japan", "canada", "mexico", "india",
                "thailand", "australia", "morocco", "turkey", "brazil", "norway", "egypt", "kenya", "sweden",
                "poland", "ireland", "croatia", "vietnam", "peru", "chile", "ghana", "nigeria", "iceland",
                "austria", "belgium"),
    "day": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
    "month": ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
              "november", "december"),
    "job": ("nurse", "teacher", "software developer", "plumber", "student", "retired engineer", "shop manager",
            "delivery driver", "chef", "lawyer", "carpenter", "pharmacist", "designer", "farmer", "electrician",
            "accountant", "dentist", "journalist", "mechanic", "cleaner", "architect", "librarian", "firefighter",
            "hairdresser"),
    "years": ("two", "three", "five", "ten", "twenty", "fifteen", "eight", "thirty"),
    "minutes": ("ten", "twenty", "thirty", "forty", "fifty"),
    "relative": ("mother", "father", "husband", "wife", "uncle", "aunt", "grandfather", "neighbour"),
    "time": ("nine", "ten", "eleven", "noon", "two", "three", "four", "five"),
    "age": ("nineteen", "twenty", "thirty", "forty", "sixty", "seventy", "eighty"),
    "ordinal": ("first", "fifth", "tenth", "fifteenth", "twentieth", "last day"),
    "surname": ("smith", "jones", "patel", "nowak", "murphy", "garcia", "okafor", "kowalski", "brown", "wilson",
                "taylor", "ahmed", "khan", "rossi", "muller", "dubois", "silva", "novak", "kelly", "evans",
                "johansson", "papadopoulos", "yilmaz", "tanaka", "mensah", "oconnor", "fernandes", "schmidt"),
    "hobby": ("football", "cooking", "gardening", "running", "painting", "chess", "cycling", "photography",
              "swimming", "knitting", "fishing", "climbing", "baking", "pottery", "sailing", "birdwatching"),
    "thing": ("sofa", "laptop", "bike", "washing machine", "car", "phone", "fridge", "camera", "boiler",
              "roof repair", "wedding", "new kitchen", "van", "piano", "holiday", "tablet", "sewing machine",
              "motorbike"),
}

# Context clauses: neutral about the intent, they only make texts long and varied.
_FILLER: tuple[str, ...] = (
    "my name is {name}",
    "my name is {name} {surname}",
    "this is {name} {surname} writing",
    "i have been a customer for {years} years",
    "i live in {city}",
    "i'm writing from my phone so sorry for any typos",
    "sorry if this is the wrong place to ask",
    "thanks in advance for your help",
    "i tried calling earlier but nobody picked up",
    "i'm currently travelling in {country}",
    "this is quite urgent for me",
    "i already looked in the app and on the website",
    "my {relative} usually deals with this kind of thing",
    "i'm not very good with technology",
    "i hope you are having a good day",
    "it has been a long week at work",
    "i spoke to {name} at the {city} branch last {day}",
    "i usually do everything online",
    "please get back to me before {day}",
    "i'm on my lunch break so i need to be quick",
    "i work as a {job} in {city}",
    "i moved here from {country} a few months ago",
    "my english is not perfect so please bear with me",
    "i waited in the queue at the branch for {minutes} minutes",
    "the chat assistant could not help me",
    "i don't want to go into the branch if i can avoid it",
    "i'm asking on behalf of my {relative} who is not online",
    "the app keeps logging me out",
    "we are planning a trip to {country} in {month}",
    "my phone number changed recently",
    "i got an email from you on {day} but i didn't understand it",
    "i have a meeting at {time} so please be quick",
    "i paid for lunch with my {card} yesterday and that worked fine",
    "my {account} was opened by my parents years ago",
    "the website says one thing and the letter says another",
    "i am {age} years old and new to all this",
    "i have two accounts with you",
    "my {relative} recommended your bank to me",
    "please reply by email rather than phone",
    "i was told to message here by the branch in {city}",
    "i'm a bit stressed about this",
    "last {day} i was at the {city} branch",
    "i just got back from {country}",
    "the weather in {city} has been awful this week",
    "my salary usually comes in on the {ordinal} of the month",
    "i'm trying to sort out my finances this month",
    "hopefully this is an easy one",
    "i spend most weekends on {hobby} so i'm rarely at home",
    "we just bought a new {thing} and money is a bit tight",
    "my {relative} is visiting from {country} next {month}",
    "i have been meaning to write for a while",
    "the branch near me in {city} closed last year",
    "i'm not sure who else to ask about this",
    "i really appreciate how helpful your staff were last time",
    "i have an appointment with {name} on {day} anyway",
    "my kids keep asking me to buy them a {thing}",
    "i don't check my emails very often",
    "i get paid weekly as a {job}",
)

# Present-tense requests: what the customer wants now.
_CUES: dict[str, tuple[str, ...]] = {
    "balance_inquiry": (
        "how much money is in my {account}",
        "what is my current balance",
        "can you tell me the balance of my {account}",
        "i want to check my balance",
        "show me how much i have left in my {account}",
        "what is the available balance on my {account}",
        "is there enough money in my {account} to pay the rent",
        "how much do i have in savings right now",
        "i need to know my balance before i go shopping",
        "has my salary arrived in my {account} yet",
    ),
    "transfer_money": (
        "i need to send {amount} to {person}",
        "how do i transfer money to {person}",
        "please move {amount} from my {account} to my savings",
        "can i make a bank transfer to {person} today",
        "i want to pay {person} back {amount}",
        "set up a transfer of {amount} to {person}",
        "how long does a transfer to {person} take",
        "i need to wire {amount} to {person} abroad",
        "can i send money to {person} from the app",
    ),
    "card_lost": (
        "i lost my {card}",
        "i can't find my {card} anywhere",
        "my {card} is missing",
        "i think i left my {card} at {place}",
        "i misplaced my {card}",
        "my {card} has gone missing",
        "i dropped my {card} somewhere near {place}",
        "my {card} is not in my wallet anymore",
        "i have no idea where my {card} is",
    ),
    "dispute_charge": (
        "there is a charge from {merchant} that i never made",
        "i don't recognise a payment to {merchant}",
        "i was charged twice by {merchant}",
        "i want to dispute a transaction from {merchant}",
        "there are payments i didn't authorise on my statement",
        "{merchant} charged me {amount} and i want it refunded",
        "someone paid {merchant} {amount} with my details and it wasn't me",
        "my statement shows {amount} to {merchant} that i don't know about",
        "there are purchases from {merchant} i never agreed to",
    ),
    "exchange_rate": (
        "what is the exchange rate for {currency}",
        "how many {currency} will i get for {amount}",
        "what rate do you give for converting to {currency}",
        "is it cheaper to pay in {currency} when i'm abroad",
        "how much do you charge to change money into {currency}",
        "what is today's rate from pounds to {currency}",
        "do you have a good rate for {currency} this week",
    ),
    "change_pin": (
        "i want to change my pin",
        "how do i reset the pin on my {card}",
        "i forgot the pin for my {card}",
        "my pin is blocked after three wrong tries",
        "can i pick a new pin number",
        "i need a new pin for my {card}",
        "where can i change the pin of my {card}",
    ),
    "loan_inquiry": (
        "can i apply for a personal loan",
        "what interest would i pay on a loan of {amount}",
        "i'd like to borrow money to buy a {thing}",
        "am i eligible for a mortgage",
        "how long does a loan application take",
        "can i get a loan to cover my {thing}",
        "what are the repayment terms for a small loan",
    ),
}

# Two-word requests, so the shortest texts (5 tokens with [CLS]/[SEP]) exist as they do in chat logs.
_TERSE: dict[str, tuple[str, ...]] = {
    "balance_inquiry": ("balance please", "my balance", "check balance", "balance check"),
    "transfer_money": ("send money", "transfer money", "make transfer", "wire money"),
    "card_lost": ("card lost", "lost card", "card missing", "misplaced card"),
    "dispute_charge": ("unknown charge", "wrong charge", "dispute payment", "charged twice"),
    "exchange_rate": ("exchange rates", "euro rate", "dollar rate", "currency rates"),
    "change_pin": ("change pin", "pin reset", "new pin", "forgot pin"),
    "loan_inquiry": ("loan options", "need loan", "loan rates", "personal loan"),
}
_TERSE_BELOW = 7  # target token counts under which a text uses the terse form

# Past-tense mentions of an intent, used inside the "already resolved" frames of hard examples.
_PAST: dict[str, tuple[str, ...]] = {
    "balance_inquiry": ("i needed to check my balance", "i wanted to know how much was in my {account}",
                        "i asked about the balance of my {account}"),
    "transfer_money": ("i needed to send {amount} to {person}", "i wanted to transfer money to {person}",
                       "a transfer to {person} was stuck"),
    "card_lost": ("i lost my {card}", "my {card} went missing", "i couldn't find my {card}"),
    "dispute_charge": ("there was a charge from {merchant} i didn't recognise", "{merchant} charged me twice",
                       "i disputed a payment to {merchant}"),
    "exchange_rate": ("i asked about the exchange rate for {currency}",
                      "i wanted to change money into {currency}"),
    "change_pin": ("i forgot my pin", "i needed to change my pin", "my pin was blocked"),
    "loan_inquiry": ("i asked about a personal loan", "i wanted to borrow money for a {thing}"),
}

_RESOLVED_FRAMES: tuple[str, ...] = (
    "a while ago i told you that {past}, but that is resolved now",
    "last month i wrote that {past} and you already sorted it",
    "my last message said {past}, please ignore that now",
    "earlier this year {past} but it was fixed quickly",
    "i know i mentioned before that {past}, that part is fine now",
    "back in {month} {past}, but that was dealt with",
)
# Frames that mark the mention as past by a time phrase only: the subtle, second-order cue.
_PAST_FRAMES: tuple[str, ...] = (
    "{past} back in {month}",
    "{past} a few weeks ago",
    "last {month} {past}",
    "{past} some time last year",
    "in {month} {past}",
)
# Share of hard card_lost / dispute_charge examples whose second intent is the other of the two: these are the
# near-twins of the rare class, told apart from it only by the secondary mention being in the past.
_TWIN_SHARE = 0.6
_TWINS = {"card_lost": "dispute_charge", "dispute_charge": "card_lost"}

# The rare class: a present lost-card cue and a present unrecognised-payment cue, nothing else distinctive.
_RARE_PARTS: tuple[str, str] = ("card_lost", "dispute_charge")
# Hard pairs (main, secondary) never involving the rare class; card_lost/dispute_charge pairs are allowed and
# are exactly what makes the rare class a question of tense and conjunction rather than of vocabulary.
_HARD_PAIRS: tuple[tuple[str, str], ...] = tuple((a, b) for a in _CUES for b in _CUES if a != b)

# Texts this long (in pre-tokens) are unique across and within splits; shorter ones may recur, as
# "balance please" recurs in real chat logs (forcing uniqueness there would skew the length law).
_UNIQUE_FROM = 12

_PRETOKEN = re.compile(r"\w+|[^\w\s]")
_SLOT = re.compile(r"\{(\w+)\}")


def lexicon() -> list[str]:
    """Every word the generator can write (templates and slot values): the tokenizer keeps them whole."""
    texts: list[str] = []
    for values in _SLOTS.values():
        texts.extend(values)
    for group in (_FILLER, _RESOLVED_FRAMES, _PAST_FRAMES):
        texts.extend(_SLOT.sub(" ", t) for t in group)
    for table in (_CUES, _TERSE, _PAST):
        for templates in table.values():
            texts.extend(_SLOT.sub(" ", t) for t in templates)
    return texts


def count_pretokens(text: str) -> int:
    """Words and punctuation marks as BERT's pre-tokenizer splits them (one token each with the demo vocabulary)."""
    return len(_PRETOKEN.findall(text))


def length_bucket(n_tokens: int) -> str:
    """Bucket name of a token count; counts outside 5..200 are a corpus bug, not user input."""
    for low, high, name in LENGTH_BUCKETS:
        if low <= n_tokens <= high:
            return name
    raise ValueError(f"token count {n_tokens} outside {MIN_TOKENS}..{MAX_TOKENS}")


@dataclass(frozen=True)
class CorpusShape:
    """How a split is drawn: rare and hard shares and the lognormal length law (median and sigma in tokens)."""

    rare_share: float = 0.025
    hard_share: float = 0.10
    length_median: float = 18.0
    length_sigma: float = 0.85


class _Writer:
    """Draws clauses and assembles one text with a random seeded stream."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def fill(self, template: str) -> str:
        return _SLOT.sub(lambda m: self.rng.choice(_SLOTS[m.group(1)]), template)

    def cue(self, label: str, target: int) -> str:
        terse = target < _TERSE_BELOW and self.rng.random() < 0.6
        return self.fill(self.rng.choice((_TERSE if terse else _CUES)[label]))

    def resolved(self, label: str) -> str:
        frame = self.rng.choice(_RESOLVED_FRAMES if self.rng.random() < 0.5 else _PAST_FRAMES)
        return self.fill(frame.replace("{past}", self.rng.choice(_PAST[label])))

    def target_tokens(self, shape: CorpusShape) -> int:
        value = math.exp(math.log(shape.length_median) + shape.length_sigma * self.rng.gauss(0.0, 1.0))
        return int(min(MAX_TOKENS, max(MIN_TOKENS, round(value))))

    def compose(self, core: Sequence[str], target: int) -> str:
        """Place the core clauses among filler clauses until the text is close to ``target`` tokens."""
        budget = target - SPECIAL_TOKENS_PER_TEXT - sum(count_pretokens(c) + 1 for c in core)
        fillers: list[str] = []
        misses = 0
        while budget > 0 and misses < 8:
            clause = self.fill(self.rng.choice(_FILLER))
            cost = count_pretokens(clause) + 1  # +1 for its full stop
            if cost <= budget:
                fillers.append(clause)
                budget -= cost
            else:
                misses += 1
        clauses = list(fillers)
        for clause in core:
            clauses.insert(self.rng.randint(0, len(clauses)), clause)
        return " ".join(_sentence(c) for c in clauses)


def _sentence(clause: str) -> str:
    question = clause.startswith(("how ", "what ", "can ", "is ", "am ", "has ", "do ", "where "))
    return clause[0].upper() + clause[1:] + ("?" if question else ".")


def _class_counts(n: int, rare_share: float) -> dict[str, int]:
    """Exact per-class counts (largest remainder) so every split has its stated rare share."""
    counts = {RARE_LABEL: max(1, round(n * rare_share))}
    rest = n - counts[RARE_LABEL]
    total = sum(_COMMON_WEIGHTS.values())
    raw = {k: rest * w / total for k, w in _COMMON_WEIGHTS.items()}
    floor = {k: int(v) for k, v in raw.items()}
    left = rest - sum(floor.values())
    for k in sorted(raw, key=lambda k: raw[k] - floor[k], reverse=True)[:left]:
        floor[k] += 1
    counts.update(floor)
    return counts


def _draw_split(prefix: str, n: int, rng: random.Random, shape: CorpusShape, avoid: set[str]) -> list[dict]:
    writer = _Writer(rng)
    counts = _class_counts(n, shape.rare_share)
    labels = [label for label in LABELS for _ in range(counts[label])]
    rng.shuffle(labels)
    n_hard = round(n * shape.hard_share)
    common_idx = [i for i, label in enumerate(labels) if label != RARE_LABEL]
    hard_idx = set(rng.sample(common_idx, min(n_hard, len(common_idx))))
    rows: list[dict] = []
    seen = set(avoid)
    for i, label in enumerate(labels):
        hard = i in hard_idx
        for _attempt in range(50):
            target = writer.target_tokens(shape)
            if label == RARE_LABEL:
                core = [writer.cue(part, target) for part in _RARE_PARTS]
            elif hard:
                if label in _TWINS and rng.random() < _TWIN_SHARE:
                    other = _TWINS[label]
                else:
                    other = rng.choice([b for a, b in _HARD_PAIRS if a == label])
                core = [writer.cue(label, target), writer.resolved(other)]
            else:
                core = [writer.cue(label, target)]
            text = writer.compose(core, target)
            if text not in seen or count_pretokens(text) < _UNIQUE_FROM:
                break
        seen.add(text)
        rows.append({"id": f"{prefix}-{i:06d}", "text": text, "label": label,
                     "label_id": LABELS.index(label), "rare_class": label == RARE_LABEL, "hard": hard})
    return rows


def generate_corpus(
    seed: int, n_train: int, n_eval: int, shape: CorpusShape | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(eval_df, train_df)`` without token columns; the evaluation split is drawn first.

    Each split has its own stream derived from ``seed``; texts of 12 pre-tokens or more are unique within the
    corpus (train redraws any that equal an evaluation text); shorter texts may recur.
    """
    import pandas as pd

    shape = shape or CorpusShape()
    eval_rows = _draw_split("eval", n_eval, random.Random(f"demopair-eval-{seed}"), shape, set())
    eval_texts = {r["text"] for r in eval_rows}
    train_rows = _draw_split("train", n_train, random.Random(f"demopair-train-{seed}"), shape, eval_texts)
    _assign_segments(eval_rows, random.Random(f"demopair-segment-eval-{seed}"))
    _assign_segments(train_rows, random.Random(f"demopair-segment-train-{seed}"))
    return pd.DataFrame(eval_rows), pd.DataFrame(train_rows)


def _assign_segments(rows: list[dict], rng: random.Random) -> None:
    """The customer segment of each row, from its own stream (texts already drawn stay unchanged)."""
    for row in rows:
        kind = "hard" if row["hard"] else "long" if count_pretokens(row["text"]) > _LONG_PRETOKENS else "other"
        row["segment"] = rng.choices(SEGMENTS, weights=_SEGMENT_WEIGHTS[kind])[0]


def annotate_lengths(df: pd.DataFrame, count_tokens: Callable[[list[str]], list[int]]) -> pd.DataFrame:
    """Add ``n_tokens`` (with [CLS]/[SEP], as the model sees it) and ``length_bucket``; enforce the schema order."""
    out = df.copy()
    out["n_tokens"] = count_tokens(out["text"].tolist())
    out["length_bucket"] = [length_bucket(int(n)) for n in out["n_tokens"]]
    out = out.astype({"id": "str", "text": "str", "label": "str", "label_id": "int64", "length_bucket": "str",
                      "rare_class": "bool", "hard": "bool", "segment": "str", "n_tokens": "int64"})
    return out[list(COLUMNS)].reset_index(drop=True)


def write_split(df: pd.DataFrame, path: Path) -> None:
    """Parquet with plain string columns (not pandas' extension dtype) so any reader gets the same schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("id", pa.string()), ("text", pa.string()), ("label", pa.string()), ("label_id", pa.int64()),
        ("length_bucket", pa.string()), ("rare_class", pa.bool_()), ("hard", pa.bool_()), ("segment", pa.string()),
        ("n_tokens", pa.int64()),
    ])
    table = pa.Table.from_pandas(df[list(COLUMNS)], schema=schema, preserve_index=False)
    pq.write_table(table, path)
