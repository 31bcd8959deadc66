"""The tools the assistant can call, declared once and passed to Gemini as native function declarations."""

from google.genai import types


def _tool(name: str, description: str, properties: dict, required: list[str]) -> types.FunctionDeclaration:
    return types.FunctionDeclaration(
        name=name,
        description=description,
        parameters_json_schema={"type": "object", "properties": properties, "required": required},
    )


FUNCTION_DECLARATIONS = [
    _tool(
        "schedule_meeting",
        "Schedule a meeting or call on the user's calendar.",
        {
            "attendees": {"type": "array", "items": {"type": "string"}, "description": "People to invite."},
            "date": {"type": "string", "description": "Day of the meeting, as the user said it."},
            "time": {"type": "string", "description": "Start time, as the user said it."},
        },
        ["attendees"],
    ),
    _tool(
        "send_email",
        "Send an email on the user's behalf.",
        {
            "to": {"type": "string", "description": "Recipient name or address."},
            "body": {"type": "string", "description": "What the email says."},
        },
        ["to", "body"],
    ),
    _tool(
        "search_web",
        "Search the web and summarise the results.",
        {
            "query": {"type": "string", "description": "What to search for."},
        },
        ["query"],
    ),
    _tool(
        "set_reminder",
        "Create a reminder for the user.",
        {
            "task": {"type": "string", "description": "What to be reminded of."},
            "when": {"type": "string", "description": "When to remind, as the user said it."},
        },
        ["task"],
    ),
    _tool(
        "place_order",
        "Order an item from a store.",
        {
            "item": {"type": "string"},
            "quantity": {"type": "integer", "minimum": 1},
            "store": {"type": "string"},
        },
        ["item"],
    ),
    _tool(
        "get_weather",
        "Get the weather forecast for a place.",
        {
            "city": {"type": "string"},
            "when": {"type": "string", "description": "Day or time of the forecast."},
        },
        ["city"],
    ),
]

TOOLS: types.ToolListUnion = [types.Tool(function_declarations=FUNCTION_DECLARATIONS)]
