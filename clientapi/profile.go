package clientapi

import "github.com/gorilla/mux"

func (a *API) profileRoutes(r *mux.Router) {}
